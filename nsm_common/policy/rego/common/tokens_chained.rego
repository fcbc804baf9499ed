# Each segment's token names the next segment's signer as its audience: nobody can splice
# a hop in or out of the path (upstream's rule of the same name).
package nsm

import data.nsm_payloads.payload

default valid = false

valid {
	count(input.path_segments) < 2
}

valid {
	links := {i | payload[i]; payload[i].aud[_] == payload[i + 1].sub}
	count(links) == count(input.path_segments) - 1
}
