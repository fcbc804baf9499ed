# Each token of the path decoded once per evaluation, for the rules beside it (a token is
# decoded once, not once per rule: the engine keeps a rule's value for the query).
package nsm_payloads

payload := {i: c | some i; t := input.path_segments[i].token; [_, c, _] := io.jwt.decode(t)}
