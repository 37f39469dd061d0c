#!/usr/bin/env python3
# compat-venv: marketo
"""marketorestpython, unchanged, against the sandbox's Marketo emulator.

Checks leads by filter (the client tunnels them as POST with _method=GET in a form body),
describe's score fields, activities through paging tokens (following short and empty pages
while moreResult is true), and a bulk activity extract (create, enqueue, poll, file).
Only the client's host is redirected (client.host), as tests/compat/README.md says.

Environment: MKTO_BASE_URL, MKTO_CLIENT_ID, MKTO_CLIENT_SECRET. Prints what it checked;
exits non-zero on the first failure.
"""
import csv
import datetime as dt
import io
import os
import sys

from marketorestpython.client import MarketoClient

CHECKS = []


def check(name, ok, detail=""):
    CHECKS.append(name)
    print(("ok   " if ok else "FAIL ") + name + (": " + str(detail) if detail else ""), flush=True)
    if not ok:
        sys.exit(1)


def main():
    base = os.environ["MKTO_BASE_URL"].rstrip("/")
    mc = MarketoClient("123-ABC-456", os.environ["MKTO_CLIENT_ID"], os.environ["MKTO_CLIENT_SECRET"])
    mc.host = base

    fields = mc.execute(method="describe")
    scores = sorted(f["rest"]["name"] for f in fields if f["dataType"] == "score")
    check("describe lists score fields with dataType score", scores == ["behaviorScore", "demographicScore", "leadScore"], scores)

    ids = [str(1_000_001 + i) for i in range(40)]
    leads = mc.execute(method="get_multiple_leads_by_filter_type", filterType="id", filterValues=ids,
                       fields=["email", "leadScore", "behaviorScore", "sfdcLeadId", "sfdcContactId", "sfdcType"],
                       batchSize=15)
    check("leads by id filter returns every lead across pages", sorted(str(l["id"]) for l in leads) == ids, len(leads))
    check("leads carry leadScore", all(isinstance(l.get("leadScore"), int) for l in leads))
    lead = next(l for l in leads if l.get("sfdcLeadId"))
    by_email = mc.execute(method="get_multiple_leads_by_filter_type", filterType="email",
                          filterValues=[lead["email"]], fields=["leadScore"])
    check("leads by email filter finds the same lead", [l["id"] for l in by_email] == [lead["id"]], by_email)
    by_sfdc = mc.execute(method="get_multiple_leads_by_filter_type", filterType="sfdcLeadId",
                         filterValues=[lead["sfdcLeadId"]], fields=["sfdcType"])
    check("leads by sfdcLeadId filter", [(l["id"], l["sfdcType"]) for l in by_sfdc] == [(lead["id"], "Lead")], by_sfdc)

    since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=800)).strftime("%Y-%m-%dT%H:%M:%SZ")
    token = mc.execute(method="get_paging_token", sinceDatetime=since)
    check("paging token issued", isinstance(token, str) and len(token) > 10, token)
    pages = list(mc.execute(method="get_lead_activities_yield", activityTypeIds=["22"], nextPageToken=token,
                            return_full_result=True))
    changes = [a for p in pages for a in p["result"]]
    check("Change Score activities stream to the end", len(changes) > 100 and not pages[-1]["moreResult"], len(changes))
    check("Change Score records name the score field and campaign",
          all(a["activityTypeId"] == 22 and a["primaryAttributeValue"] in ("Lead Score", "Behavior Score", "Demographic Score")
              and "campaignId" in a for a in changes))
    dates = [a["activityDate"] for a in changes]
    check("activities come oldest first", dates == sorted(dates))

    lead_id = changes[len(changes) // 2]["leadId"]
    mine = [a for p in mc.execute(method="get_lead_activities_yield", activityTypeIds=["22"], sinceDatetime=since,
                                  leadIds=str(lead_id), batchSize=100)
            for a in p]
    expected = [a["marketoGUID"] for a in changes if a["leadId"] == lead_id]
    check("a sparse leadIds filter follows empty pages to the same records",
          [a["marketoGUID"] for a in mine] == expected, len(expected))

    end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    start = end - dt.timedelta(days=30)
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
    job = mc.execute(method="create_activities_export_job",
                     filters={"createdAt": {"startAt": iso(start), "endAt": iso(end)}, "activityTypeIds": [22]})
    export_id = job[0]["exportId"]
    check("bulk activity export created", job[0]["status"] == "Created", export_id)
    queued = mc.execute(method="enqueue_activities_export_job", job_id=export_id)
    check("bulk export enqueued", queued[0]["status"] == "Queued", queued[0]["status"])
    status = None
    for _ in range(20):
        status = mc.execute(method="get_activities_export_job_status", job_id=export_id)[0]
        if status["status"] in ("Completed", "Failed", "Cancelled"):
            break
    check("bulk export completes", status["status"] == "Completed", status)
    data = mc.execute(method="get_activities_export_job_file", job_id=export_id)
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    check("bulk file has numberOfRecords rows", len(rows) == status["numberOfRecords"], len(rows))
    in_window = [a for a in changes if iso(start) <= a["activityDate"] <= iso(end)]
    check("bulk rows match the REST activities in the window",
          sorted(r["marketoGUID"] for r in rows) == sorted(a["marketoGUID"] for a in in_window), len(in_window))

    print(f"{len(CHECKS)} passed, 0 failed")


if __name__ == "__main__":
    main()
