"""A migration in the background: the documented async + migration_info pattern, from start to finish."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from xml.etree import ElementTree

from conftest import VENV


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


def test_the_progress_leaves_a_json_callbacks_output_json_and_junit_reports_clean(running_lab, tmp_path):
    """ansible.posix.json as the stdout callback and ansible.builtin.junit beside it, during a migration that
    prints its progress: stdout is one JSON document holding the result, the progress lines went to stderr, and
    the JUnit report is XML without them."""
    running_lab.start_guest("hv1", "jsonout", memory_mib=512, dirty_mib=64, pages_per_s=1000)
    try:
        before = running_lab.console("hv1", "jsonout")
        playbook = tmp_path / "json.yml"
        playbook.write_text(textwrap.dedent("""\
            - name: JSON output
              hosts: hv1
              gather_facts: false
              tasks:
                - name: Migrate with progress every second
                  kvm.live_migration.migrate:
                    name: jsonout
                    dest_host: hv2
                    bandwidth: 48
                    progress_interval: 1
            """))
        junit = tmp_path / "junit"
        env = {**running_lab.env, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
               "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.junit", "JUNIT_OUTPUT_DIR": str(junit)}
        completed = subprocess.run([str(VENV / "bin" / "ansible-playbook"), "-i", str(running_lab.inventory),
                                    str(playbook)], env=env, capture_output=True, text=True, timeout=600,
                                   check=False)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

        document = json.loads(completed.stdout)  # the whole of stdout, nothing before or after it
        result = document["plays"][0]["tasks"][0]["hosts"]["hv1"]
        assert (result["migration"]["status"], result["migration"]["owner"]) == ("completed", "hv2")
        progress = re.findall(r"^hv1: jsonout -> hv2: pass \d+.*$", completed.stderr, re.MULTILINE)
        # Mostly zero pages, which the bandwidth cap does not slow: a fast run may print a single pass.
        assert progress, completed.stderr[-3000:]
        (report,) = junit.glob("*.xml")
        (case,) = ElementTree.parse(report).getroot().iter("testcase")
        assert case.get("name").startswith("[hv1] JSON output: Migrate with progress every second"), case.get("name")
        assert "jsonout -> hv2: pass" not in report.read_text()
        running_lab.assert_intact("hv2", "jsonout", before)
    finally:
        running_lab.remove_guest("jsonout")
