"""``longcat jobs {list,show,watch,cancel}``: the caller's edit and training jobs."""

from __future__ import annotations

import json

from longcat.cli.output import as_dict, emit_list, job_line
from longcat.cli.remote import add_gateway_args, client, follow


def register(sub) -> None:
    p = sub.add_parser("jobs", help="list, show, watch or cancel jobs")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = verbs.add_parser("list", help="your jobs, newest first")
    ls.add_argument("--kind", choices=("edit", "training"), default=None, help="only edit or only training jobs")
    ls.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelled"), default=None,
                    help="only jobs in this state")
    ls.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    for name, helptext in (("show", "one job"), ("watch", "follow a job to its end"), ("cancel", "cancel a job")):
        v = verbs.add_parser(name, help=helptext)
        v.add_argument("job_id", help="the job's id (longcat jobs list shows them)")
    for v in verbs.choices.values():
        add_gateway_args(v)
    p.set_defaults(func=run)


def run(args) -> int:
    with client(args) as lc:
        if args.verb == "list":
            emit_list(lc.list_jobs(args.kind, args.state, args.limit), args, job_line, "no jobs")
            return 0
        if args.verb == "watch":
            job = follow(lc, args.job_id, bars=not args.json, events_json=args.json)
        elif args.verb == "cancel":
            job = lc.cancel_job(args.job_id)
        else:
            job = lc.get_job(args.job_id)
        if args.verb != "watch" or not args.json:
            print(json.dumps(as_dict(job)) if args.json else job_line(job))
    return 0
