"""The only package that touches the kernel: TUN devices, routes, and the undo journal."""
