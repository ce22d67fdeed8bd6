"""`runtime job submit|status|logs|stop|list`: the job server's command line."""

from __future__ import annotations

import argparse
import os
import sys


def _client(args: argparse.Namespace):  # noqa: ANN202
    from ..jobs.client import JobSubmissionClient
    return JobSubmissionClient(args.address)


def _submit(args: argparse.Namespace) -> int:
    entry = list(args.entrypoint)
    if entry and entry[0] == "--":
        entry = entry[1:]
    if bool(args.notebook) == bool(entry):
        print("Give either --notebook NB.ipynb or an entrypoint after `--`, like: "
              "runtime job submit -- python script.py", file=sys.stderr)
        return 2
    if args.parameter and not args.notebook:
        print("-p NAME VALUE sets notebook parameters; it needs --notebook.", file=sys.stderr)
        return 2
    client = _client(args)
    if args.notebook:
        path = os.path.abspath(args.notebook)
        if not os.path.isfile(path):
            print(f"No notebook at {args.notebook!r}.", file=sys.stderr)
            return 2
        with open(path, "rb") as f:
            data = f.read()
        name = os.path.basename(path)
        job_id = client.submit_job(submission_id=args.submission_id, files={name: data}, notebook=name,
                                   parameters=args.parameter, working_dir=os.path.dirname(path))
    else:
        import shlex
        job_id = client.submit_job(entrypoint=" ".join(shlex.quote(a) for a in entry),
                                   submission_id=args.submission_id, runtime_env=_runtime_env(args),
                                   metadata=_json_object(args.metadata_json, "--metadata-json"))
    print(f"Job {job_id} submitted.", flush=True)
    if args.no_wait:
        print(f"Follow it with `runtime job logs {job_id} --follow`.")
        return 0
    status = client.wait_until_finished(job_id, on_output=lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    info = client.get_job_info(job_id)
    if args.notebook and info.get("artifact"):
        try:
            name, data = client.get_job_artifact(job_id)
            out = args.output or os.path.join(os.getcwd(), name)
            with open(out, "wb") as f:
                f.write(data)
            print(f"Executed notebook: {out}")
        except Exception as e:  # noqa: BLE001 - the job's result stands; say why the copy failed
            print(f"Could not fetch the executed notebook: {e}", file=sys.stderr)
    print(f"Job {job_id} {status}: {info.get('message', '')}")
    return 0 if status == "SUCCEEDED" else 1


def _json_object(text: str | None, flag: str) -> dict | None:
    import json
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{flag} must be a JSON object, like '{{\"env_vars\": {{\"A\": \"1\"}}}}': {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}.")
    return value


def _runtime_env(args: argparse.Namespace) -> dict | None:
    """--runtime-env-json and --working-dir, as `ray job submit` takes them."""
    env = _json_object(args.runtime_env_json, "--runtime-env-json") or {}
    if args.runtime_env:
        import yaml
        with open(args.runtime_env) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--runtime-env {args.runtime_env!r} must hold a mapping (YAML or JSON).")
        env = {**loaded, **env}
    if args.working_dir:
        env["working_dir"] = os.path.abspath(args.working_dir)
    return env or None


def _delete(args: argparse.Namespace) -> int:
    _client(args).delete_job(args.job_id)
    print(f"Job {args.job_id} deleted.")
    return 0


def _status(args: argparse.Namespace) -> int:
    info = _client(args).get_job_info(args.job_id)
    print(f"{info.get('submission_id') or info.get('job_id')}: {info['status']} {info.get('message') or ''}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        client.wait_until_finished(args.job_id, on_output=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
    else:
        sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def _stop(args: argparse.Namespace) -> int:
    stopped = _client(args).stop_job(args.job_id)
    print(f"Job {args.job_id} {'stopped' if stopped else 'had already ended'}.")
    return 0


def _list(args: argparse.Namespace) -> int:
    for j in _client(args).list_jobs():
        job_id = j.get("submission_id") or j.get("job_id") or ""
        print(f"{job_id:<20} {j.get('type') or '':<11} {j['status']:<10} {j.get('entrypoint') or ''}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    job = sub.add_parser("job", help="submit and follow jobs (scripts or notebooks) on the cluster")
    jsub = job.add_subparsers(dest="job_command", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--address", default=None, help="the head's dashboard, http://HOST:8265 (Ray's job API), or "
                       "its control store HOST:PORT (default: RUNTIME_ADDRESS, else auto)")
        return p

    s = common(jsub.add_parser("submit", help="run a notebook or a command as a job"))
    s.add_argument("--notebook", help="a .ipynb to run top to bottom; the executed copy is kept")
    s.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="notebook parameter: replaces the cell tagged 'parameters'")
    s.add_argument("--output", help="where to write the executed notebook (default: ./executed-NAME.ipynb)")
    s.add_argument("--submission-id", default=None)
    s.add_argument("--runtime-env-json", default=None, help='the job\'s runtime_env, like \'{"env_vars": {"A": "1"}}\'')
    s.add_argument("--runtime-env", default=None, help="a YAML or JSON file holding the job's runtime_env")
    s.add_argument("--working-dir", default=None, help="a local directory the job runs in (uploaded to the head)")
    s.add_argument("--metadata-json", default=None, help="the job's metadata, a JSON object of strings")
    s.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the log")
    s.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- COMMAND ARGS... for a script job")
    s.set_defaults(fn=_submit)
    for name, fn, helptext in (("status", _status, "a job's status"), ("stop", _stop, "stop a running job"),
                               ("delete", _delete, "forget a finished job and its files")):
        p = common(jsub.add_parser(name, help=helptext))
        p.add_argument("job_id")
        p.set_defaults(fn=fn)
    lg = common(jsub.add_parser("logs", help="a job's output"))
    lg.add_argument("job_id")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(fn=_logs)
    common(jsub.add_parser("list", help="jobs on the cluster")).set_defaults(fn=_list)
