"""hpo-cluster test bed: small clusters of Debian nodes booted with systemd-nspawn.

Each node runs real systemd as PID 1 and sshd, sits on a host bridge in
198.18.0.0/15 and is reached by Ansible over SSH exactly like a real machine.
See docs/testbed.md.
"""
