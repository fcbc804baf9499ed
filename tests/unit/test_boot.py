"""The boot id the agent keeps: a reboot is told by the kernel's boot id changing between runs."""

from __future__ import annotations

from pathlib import Path

from nsm_agent.state.boot import rebooted_since_last_run, record_boot


def test_a_reboot_is_told_once_and_a_first_start_is_none(tmp_path: Path) -> None:
    kernel = tmp_path / "boot_id"
    state = tmp_path / "state"
    state.mkdir()
    kernel.write_text("aaaa\n")
    assert not rebooted_since_last_run(state, kernel)  # first start: nothing to compare with
    record_boot(state, kernel)
    assert not rebooted_since_last_run(state, kernel)  # a restart in the same boot
    kernel.write_text("bbbb\n")
    assert rebooted_since_last_run(state, kernel)
    assert rebooted_since_last_run(state, kernel)  # until recorded (a crash before: undone again)
    record_boot(state, kernel)
    assert not rebooted_since_last_run(state, kernel)
    assert (state / "boot_id").read_text().strip() == "bbbb"
