"""What touches the kernel: netlink calls on one dedicated thread."""
