# The caller's token (the segment before this hop's) is signed by the key of the
# certificate the caller presented on this TLS connection: a token copied from somebody
# else's path does not pass (upstream's rule of the same name).
package nsm

default valid = false

valid {
	caller := input.index - 1
	caller >= 0
	io.jwt.verify_es256(input.path_segments[caller].token, input.auth_info.certificate)
}
