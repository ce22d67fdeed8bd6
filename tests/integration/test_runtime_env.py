"""runtime_env on a real cluster: working_dir (with excludes), py_modules, pip/uv from the
package index (slow), jobs with their own environments side by side, and the failures users
hit. Drivers are separate processes, as users' are."""

from __future__ import annotations

import glob
import json
import os
import pathlib

import pytest


def _files(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def head(cli):
    cli.run("start", "--head", "--port", "0", "--num-cpus", "2")
    return cli


def test_working_dir_py_modules_and_what_tasks_leave_behind(head):
    root = pathlib.Path(head.tmpdir) / "proj"
    _files(root, {"wd/data.txt": "from the working_dir", "wd/big/weights.bin": "x", "wd/helper.py": "WHO = 'wd'",
                  "lib/shared_pkg/__init__.py": "VALUE = 42", "lib/single.py": "def hi(): return 'hi'"})
    import zipfile
    with zipfile.ZipFile(root / "wheelmod-1.0-py3-none-any.whl", "w") as z:
        z.writestr("wheelmod/__init__.py", "FROM = 'wheel'")
        z.writestr("wheelmod-1.0.dist-info/METADATA", "Name: wheelmod\nVersion: 1.0\n")
    with zipfile.ZipFile(root / "zipped.zip", "w") as z:  # Ray's rule: one top directory is the working_dir
        z.writestr("top/inside.txt", "zipped")
    out = head.driver(f"""
        import json, os, sys
        import runtime
        os.chdir({str(root)!r})
        runtime.init(address="auto", runtime_env={{"working_dir": "wd", "excludes": ["big/"],
                                                   "env_vars": {{"LEVEL": "job"}}}})

        @runtime.remote
        def look():
            import helper
            return [os.path.basename(os.getcwd()).startswith("_ray_pkg_"), open("data.txt").read(),
                    os.path.exists("big/weights.bin"), helper.WHO, os.environ["LEVEL"], os.getpid()]

        @runtime.remote(runtime_env={{"py_modules": ["lib/shared_pkg", "lib/single.py"],
                                     "env_vars": {{"LEVEL": "task"}}}})
        def mods():
            import shared_pkg, single
            return [shared_pkg.VALUE, single.hi(), os.environ["LEVEL"], os.path.exists("data.txt"), os.getpid()]

        @runtime.remote
        def litter():
            os.environ["LEFT"] = "1"; os.chdir("/"); sys.path.insert(0, "/left")

        @runtime.remote
        def clean():
            return [os.environ.get("LEFT"), open("data.txt").read() != "", "/left" in sys.path]

        @runtime.remote(runtime_env={{"py_modules": ["wheelmod-1.0-py3-none-any.whl"], "working_dir": "zipped.zip"}})
        def packed():
            import wheelmod
            return [wheelmod.FROM, open("inside.txt").read()]
        assert runtime.get(packed.remote()) == ["wheel", "zipped"]

        a, b = runtime.get([look.remote(), mods.remote()])
        runtime.get([litter.remote() for _ in range(4)])
        after = runtime.get([clean.remote() for _ in range(4)])
        print(json.dumps([a, b, after]))
    """)
    a, b, after = json.loads(out.strip().splitlines()[-1])
    assert a[:5] == [True, "from the working_dir", False, "wd", "job"]
    # the task's runtime_env adds to the job's key by key (Ray's rule), env_vars merged: the
    # job's working_dir stays
    assert b[:4] == [42, "hi", "task", True]
    assert a[5] != b[4]  # two environments never share a worker
    assert after == [[None, True, False]] * 4


def test_two_jobs_with_different_envs_run_at_once_on_one_node(head):
    root = pathlib.Path(head.tmpdir)
    release = root / "release"
    scripts = []
    for name in ("alpha", "beta"):
        _files(root / name, {"who.py": f"NAME = {name!r}"})
        scripts.append(head.start_driver(f"""
            import json, os, runtime
            from runtime._testing.sync import wait_for_path
            runtime.init(address="auto", runtime_env={{"working_dir": {str(root / name)!r},
                                                       "env_vars": {{"TEAM": {name!r}}}}})

            @runtime.remote(num_cpus=1)
            def hold():
                import who
                open({str(root)!r} + "/started-" + who.NAME, "w").close()
                assert wait_for_path({str(release)!r}, 60)
                return [who.NAME, os.environ["TEAM"], os.getpid(), os.path.exists({str(root / 'beta' / 'who.py')!r})]
            print(json.dumps(runtime.get(hold.remote())))
        """))
    from runtime._testing.sync import wait_for
    try:
        wait_for(lambda: all((root / f"started-{n}").exists() for n in ("alpha", "beta")), 60,
                 "both jobs' tasks to run at the same time")
    finally:
        release.touch()
    results = []
    for p in scripts:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    (a_name, a_team, a_pid, _), (b_name, b_team, b_pid, _) = results
    assert (a_name, a_team, b_name, b_team) == ("alpha", "alpha", "beta", "beta") and a_pid != b_pid


def test_submitted_job_runs_in_its_working_dir_with_py_modules(head):
    root = pathlib.Path(head.tmpdir)
    _files(root / "job", {"main.py": "import os, runtime, jobmod\nruntime.init()\n"
                                     "@runtime.remote\ndef f():\n    import jobmod\n    return jobmod.X + open('in.txt').read()\n"
                                     "print('job says', jobmod.X, runtime.get(f.remote()))\n", "in.txt": "!"})
    _files(root / "mods" / "jobmod", {"__init__.py": "X = 'mod'"})
    head.driver(f"""
        import time
        from runtime.job_submission import JobSubmissionClient
        c = JobSubmissionClient("auto")
        job = c.submit_job(entrypoint="python main.py", runtime_env={{"working_dir": {str(root / 'job')!r},
                                                                     "py_modules": [{str(root / 'mods' / 'jobmod')!r}]}})
        from runtime._testing.sync import wait_for
        wait_for(lambda: c.get_job_status(job) in ("SUCCEEDED", "FAILED"), 60, "the job to end")
        logs = c.get_job_logs(job)
        assert c.get_job_status(job) == "SUCCEEDED" and "job says mod mod!" in logs, logs
    """)


def test_bad_runtime_envs_fail_at_the_call_with_what_to_do(head):
    root = pathlib.Path(head.tmpdir)
    _files(root / "fat", {"model.bin": "x" * (2 << 20), "code.py": "1"})
    head.env["RUNTIME_RUNTIME_ENV_MAX_PACKAGE_MB"] = "1"
    head.driver(f"""
        import pytest, runtime
        runtime.init(address="auto")

        @runtime.remote
        def f():
            return 1
        for env, text in [({{"working_dir": {str(root / 'fat')!r}}}, "model.bin"),
                          ({{"working_dir": {str(root / 'missing')!r}}}, "does not exist"),
                          ({{"conda": "env.yml"}}, "use 'pip' or 'uv'")]:
            with pytest.raises((ValueError, TypeError), match=text):
                f.options(runtime_env=env).remote()
        assert runtime.get(f.options(runtime_env={{"working_dir": {str(root / 'fat')!r},
                                                   "excludes": ["*.bin"]}}).remote()) == 1
    """)


@pytest.mark.slow
def test_pip_from_the_index_is_installed_once_per_node_and_failures_fail_the_task(head):
    """Real installs from the package index: a list, a requirements file, `uv`, a cached spec
    (no second install), and one that cannot be installed."""
    root = pathlib.Path(head.tmpdir)
    (root / "requirements.txt").write_text("tabulate==0.9.0\n")
    script = f"""
        import json, os, runtime
        runtime.init(address="auto")

        @runtime.remote
        def version():
            import tabulate
            return tabulate.__version__

        @runtime.remote
        def plain():
            try:
                import tabulate
                return "leaked"
            except ImportError:
                return "absent"
        out = [runtime.get(version.options(runtime_env={{"pip": ["tabulate==0.9.0"]}}).remote()),
               runtime.get(version.options(runtime_env={{"pip": {str(root / 'requirements.txt')!r}}}).remote()),
               runtime.get(version.options(runtime_env={{"uv": ["tabulate==0.8.10"]}}).remote()),
               runtime.get(plain.remote())]
        try:
            runtime.get(version.options(runtime_env={{"pip": ["orrery-no-such-package-xyz==1.0"]}}).remote())
        except runtime.exceptions.RuntimeEnvSetupError as e:
            out.append(str(e))
        out.append(runtime.get(plain.remote()))  # the node carries on
        print(json.dumps(out))
    """
    first = json.loads(head.driver(script, timeout=240).strip().splitlines()[-1])
    assert first[:4] == ["0.9.0", "0.9.0", "0.8.10", "absent"] and first[5] == "absent"
    assert "orrery-no-such-package-xyz" in first[4] and "last lines" in first[4]
    logs = glob.glob(os.path.join(head.tmpdir, "orrery", "session_*", "runtime_resources", "*", "pip", "*.log"))
    stamps = {p: os.path.getmtime(p) for p in logs}
    # a new job with the same specs: served from the node's cache, nothing installed again
    again = json.loads(head.driver(script, timeout=240).strip().splitlines()[-1])
    assert again[:4] == first[:4]
    installed = [p for p in logs if "tabulate" in open(p).read()]
    assert len(installed) == 2 and all(os.path.getmtime(p) == stamps[p] for p in installed)
    status = head.run("status").stdout
    assert "Runtime env cache:" in status and "tabulate==0.9.0" in status
