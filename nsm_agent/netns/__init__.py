"""Finding pods' network namespaces from what a Request names."""
