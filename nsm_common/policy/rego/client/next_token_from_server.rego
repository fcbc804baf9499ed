# The server's token (the segment after the caller's, in the reply) names the server the
# caller dialled as its subject. Upstream's next_token_signed also checks the signature
# with the server's certificate; grpcio's client API does not show a client the server's
# certificate, so here the TLS handshake (the server proved that ID's name) stands in.
package nsm

default valid = false

valid {
	not input.server_spiffe_id
}

valid {
	[_, claims, _] := io.jwt.decode(input.path_segments[input.index + 1].token)
	claims.sub == input.server_spiffe_id
}
