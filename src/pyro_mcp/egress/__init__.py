"""Egress: the per-workspace proxy that decides every connection a guest makes."""

# Where the guest finds the egress proxy (QEMU forwards it to the supervisor).
EGRESS_GUEST_ADDRESS = "10.0.2.100"
EGRESS_GUEST_PORT = 3128
