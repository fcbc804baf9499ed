# Each segment's token names the next segment's signer as its audience: nobody can splice
# a hop in or out of the path (upstream's rule of the same name).
package nsm

default valid = false

valid {
	count(input.path_segments) < 2
}

valid {
	links := {i | input.path_segments[i]; linked(input.path_segments[i].token, input.path_segments[i + 1].token)}
	count(links) == count(input.path_segments) - 1
}

linked(this, next) {
	[_, a, _] := io.jwt.decode(this)
	[_, b, _] := io.jwt.decode(next)
	a.aud[_] == b.sub
}
