"""A migration in the background: the documented async + migration_info pattern, from start to finish."""

from __future__ import annotations

import json
import textwrap


def test_the_documented_async_pattern_follows_the_migration_until_the_task_ends(running_lab, tmp_path):
    """migration_info polled until the migrate task has ended: not over at the first poll (no job yet), and no
    error once the source undefined the guest."""
    running_lab.start_guest("hv1", "background", memory_mib=512, dirty_mib=64, pages_per_s=1000)
    try:
        before = running_lab.console("hv1", "background")
        playbook, result_file = tmp_path / "async.yml", tmp_path / "progress.json"
        playbook.write_text(textwrap.dedent(f"""\
            - hosts: hv1
              gather_facts: false
              tasks:
                - name: Start the migration in the background
                  kvm.live_migration.migrate:
                    name: background
                    dest_host: hv2
                    bandwidth: 48
                  async: 600
                  poll: 0
                  register: started
                - name: Follow it until the task has ended
                  kvm.live_migration.migration_info:
                    name: background
                    async_job_id: "{{{{ started.ansible_job_id }}}}"
                  register: progress
                  until: progress.finished
                  retries: 300
                  delay: 1
                - name: Forget the background job
                  ansible.builtin.async_status:
                    jid: "{{{{ started.ansible_job_id }}}}"
                    mode: cleanup
                - ansible.builtin.copy:
                    content: "{{{{ progress | to_json }}}}"
                    dest: {result_file}
                    mode: "0644"
                  delegate_to: localhost
            """))
        code, output = running_lab.playbook(playbook)
        assert code == 0, output
        progress = json.loads(result_file.read_text())
        assert progress["finished"] is True and progress["job_failed"] is False, progress
        assert (progress["migration"]["status"], progress["migration"]["owner"]) == ("completed", "hv2")
        assert progress["present"] is False  # the source undefined the guest, and the poll still ended cleanly
        assert progress["attempts"] > 3  # 512 MiB at 48 MiB/s: the first polls saw the job under way
        assert running_lab.running_guests("hv2") == {"background"}
        running_lab.assert_intact("hv2", "background", before)
    finally:
        running_lab.remove_guest("background")
