# Every segment of the path carries a JWT (upstream's rule of the same name).
package nsm

import data.nsm_payloads.payload

default valid = false

valid {
	count(payload) == count(input.path_segments)
}
