#!/usr/bin/env python3
# compat-venv: marketo
"""tap-marketo (Singer), unchanged, against the sandbox's Marketo emulator.

Runs discovery (activity types and lead describe become streams) and a sync of the Change
Score activity stream, which tap-marketo does with bulk activity exports (create, enqueue,
poll, Range probe, download) in windows from start_date. The tap builds
https://<munchkin>.mktorest.com URLs itself, so the host is redirected at the
requests.Session.send level by a sitecustomize.py on PYTHONPATH, as DNS would redirect it
(see tests/compat/README.md). The Change Score records are compared with what the REST
activities API returns for the same window.

Environment: MKTO_BASE_URL, MKTO_CLIENT_ID, MKTO_CLIENT_SECRET; TAP_MARKETO (the tap's
executable, default `tap-marketo` beside this Python). Exits non-zero on failure.
"""
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

MUNCHKIN = "123-ABC-456"
CHECKS = []

SITECUSTOMIZE = '''
import os, requests
_base = os.environ["MKTO_BASE_URL"].rstrip("/")
_real = "https://{m}.mktorest.com".format(m=os.environ["MKTO_MUNCHKIN"]).lower()
_send = requests.Session.send
def _redirected(self, request, **kwargs):
    if request.url.lower().startswith(_real):
        request.url = _base + request.url[len(_real):]
    return _send(self, request, **kwargs)
requests.Session.send = _redirected
'''


def check(name, ok, detail=""):
    CHECKS.append(name)
    print(("ok   " if ok else "FAIL ") + name + (": " + str(detail) if detail else ""), flush=True)
    if not ok:
        sys.exit(1)


def tap_command():
    exe = os.environ.get("TAP_MARKETO") or os.path.join(os.path.dirname(sys.executable), "tap-marketo")
    if not os.path.exists(exe):
        exe = shutil.which("tap-marketo")
    if not exe:
        sys.exit("tap-marketo is not installed: pip install -r tests/compat/requirements-marketo.txt")
    return exe


def parse_time(text):
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def rest_change_scores(base, since, until):
    """Change Score activities in [since, until] through the REST API (plain urllib)."""
    q = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": os.environ["MKTO_CLIENT_ID"],
                                "client_secret": os.environ["MKTO_CLIENT_SECRET"]})
    token = json.load(urllib.request.urlopen(f"{base}/identity/oauth/token?{q}"))["access_token"]

    def get(path):
        req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
        body = json.load(urllib.request.urlopen(req))
        if not body["success"]:
            raise SystemExit(f"REST call {path} failed: {body}")
        return body

    page = get("/rest/v1/activities/pagingtoken.json?" + urllib.parse.urlencode({"sinceDatetime": since}))
    nxt, found = page["nextPageToken"], []
    for _ in range(10_000):
        body = get("/rest/v1/activities.json?activityTypeIds=22&nextPageToken=" + nxt)
        found += [a for a in body.get("result", []) if parse_time(a["activityDate"]) <= until]
        nxt = body["nextPageToken"]
        if not body["moreResult"]:
            return found
    raise SystemExit("REST activities never ended")


def main():
    base = os.environ["MKTO_BASE_URL"].rstrip("/")
    work = tempfile.mkdtemp(prefix="tap-marketo-compat-")
    with open(os.path.join(work, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    env = dict(os.environ, MKTO_MUNCHKIN=MUNCHKIN,
               PYTHONPATH=work + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=20)).replace(microsecond=0)
    config = {"endpoint": f"https://{MUNCHKIN}.mktorest.com/rest", "client_id": os.environ["MKTO_CLIENT_ID"],
              "client_secret": os.environ["MKTO_CLIENT_SECRET"], "start_date": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
              "poll_interval": 1, "job_timeout": 120}
    config_path = os.path.join(work, "config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    exe = tap_command()

    discovered = subprocess.run([exe, "--config", config_path, "--discover"], env=env, capture_output=True,
                                text=True, timeout=300)
    if discovered.returncode != 0:
        print(discovered.stderr[-3000:])
    check("discovery exits 0", discovered.returncode == 0)
    catalog = json.loads(discovered.stdout)
    streams = {s["tap_stream_id"]: s for s in catalog["streams"]}
    check("discovery makes a Change Score activity stream", "activities_change_score" in streams, sorted(streams))
    leads_props = streams["leads"]["schema"]["properties"]
    check("discovery makes lead score fields integers",
          all("integer" in leads_props[f]["type"] for f in ("leadScore", "behaviorScore", "demographicScore")))
    change_score = streams["activities_change_score"]
    check("Change Score stream has its attributes", {"new_value", "old_value", "change_value"} <= set(change_score["schema"]["properties"]),
          sorted(change_score["schema"]["properties"]))

    for stream in catalog["streams"]:
        for entry in stream["metadata"]:
            if entry["breadcrumb"] == []:
                entry["metadata"]["selected"] = stream["tap_stream_id"] == "activities_change_score"
            elif stream["tap_stream_id"] == "activities_change_score":
                entry["metadata"]["selected"] = True
    properties_path = os.path.join(work, "properties.json")
    with open(properties_path, "w") as f:
        json.dump(catalog, f)
    synced = subprocess.run([exe, "--config", config_path, "--properties", properties_path], env=env,
                            capture_output=True, text=True, timeout=600)
    if synced.returncode != 0:
        print(synced.stderr[-3000:])
    check("activities sync exits 0", synced.returncode == 0)
    messages = [json.loads(line) for line in synced.stdout.splitlines() if line.strip()]
    records = [m["record"] for m in messages if m["type"] == "RECORD"]
    check("sync emits Change Score records", len(records) > 0, len(records))
    check("records carry score values and campaigns",
          all(r["activityTypeId"] == 22 and isinstance(r.get("new_value"), int) for r in records))
    # The tap rewrites dates as +00:00; compare instants, not strings.
    until = max(parse_time(r["activityDate"]) for r in records)
    rest = rest_change_scores(base, config["start_date"], until)
    tap_ids = sorted(r["marketoGUID"] for r in records)
    rest_ids = sorted(a["marketoGUID"] for a in rest)
    check("bulk-exported records equal the REST activities of the window", tap_ids == rest_ids,
          f"tap {len(tap_ids)} rest {len(rest_ids)}")
    states = [m for m in messages if m["type"] == "STATE"]
    check("sync writes state", len(states) > 0)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{len(CHECKS)} passed, 0 failed")


if __name__ == "__main__":
    main()
