"""What every backend does to an ELB node besides starting its HAProxy: install the kernel accounting of backend
connections that lab.render.accounting describes (before HAProxy starts, so counting starts at zero)."""

from __future__ import annotations

from collections.abc import Iterable

from lab.hosts import Host
from lab.render.accounting import CHAIN_OUT, ELB_CONNTRACK_SYSCTLS, Instance, render_rules


def accounting_installed(host: Host) -> bool:
    text = host.run(["iptables-save", "-t", "filter"], timeout=20).stdout
    return f"-j {CHAIN_OUT}" in text


def install_accounting(host: Host, instances: Iterable[Instance]) -> bool:
    """Install the accounting rules in an ELB node once (idempotent: never resets counters). True if installed now."""
    if accounting_installed(host):
        return False
    host.run(["iptables-restore", "--noflush"], input=render_rules(instances), timeout=20)
    host.set_sysctls(ELB_CONNTRACK_SYSCTLS)
    return True
