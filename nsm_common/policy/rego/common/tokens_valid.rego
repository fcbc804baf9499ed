# Every segment of the path carries a JWT (upstream's rule of the same name).
package nsm

default valid = false

valid {
	count(input.path_segments) == 0
}

valid {
	decoded := {i | input.path_segments[i]; io.jwt.decode(input.path_segments[i].token)}
	count(decoded) == count(input.path_segments)
}
