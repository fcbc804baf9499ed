# Each token's claims, as this project's code decoded them into the input (`claims`, beside
# upstream's `token`): decoding in the engine costs ten times more, and is done once here
# rather than once per rule. A token that does not decode has no claims.
package nsm_payloads

payload := {i: c | some i; c := input.path_segments[i].claims}
