# The caller's token is in the caller's own name: its subject is the SPIFFE ID the caller
# proved on this TLS connection. (prev_token_signed checks the signature; without this a
# caller could sign a token naming somebody else.)
package nsm

import data.nsm_payloads.payload

default valid = false

valid {
	payload[input.index - 1].sub == input.caller.spiffe_id
}
