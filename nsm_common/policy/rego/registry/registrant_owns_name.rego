# A name belongs to the identity that first registered it: only it may register the name
# again or unregister it (upstream's registry client_allowed rule, same input).
package nsm

default valid = false

valid {
	not input.resource_path_ids_map[input.resource_name]
}

valid {
	input.resource_path_ids_map[input.resource_name][0] == input.resource_id
}
