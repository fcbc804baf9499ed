# No token of the path has expired (upstream's rule of the same name).
package nsm

import data.nsm_payloads.payload

default valid = false

valid {
	now := time.now_ns() / 1000000000
	alive := {i | payload[i]; now < payload[i].exp}
	count(alive) == count(input.path_segments)
}
