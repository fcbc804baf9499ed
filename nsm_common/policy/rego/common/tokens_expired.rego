# No token of the path has expired (upstream's rule of the same name).
package nsm

default valid = false

valid {
	alive := {i | input.path_segments[i]; unexpired(input.path_segments[i].token)}
	count(alive) == count(input.path_segments)
}

unexpired(token) {
	[_, claims, _] := io.jwt.decode(token)
	time.now_ns() / 1000000000 < claims.exp
}
