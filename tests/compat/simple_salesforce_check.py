#!/usr/bin/env python3
# compat-venv: salesforce
"""Checks the mqlsync Salesforce sandbox with the public simple-salesforce client, unchanged.

Only the address is redirected, as tests/compat/README.md says: a requests.Session subclass
rewrites https://127.0.0.1:PORT (and the login host https://login.salesforce.com, for the
JWT bearer flow) to the sandbox's http base URL. Reads SF_BASE_URL, SF_CLIENT_ID,
SF_CLIENT_SECRET, SF_USERNAME (e.g. from `mqlsync sandbox --json`); optional SF_JWT_KEY (path
of the test-only private key, default tests/fixtures/jwt/sandbox-test-only-private.pem).
Prints each check; exits non-zero on the first failure.
"""
import json
import os
import sys
import time
from urllib.parse import urlparse

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceExpiredSession, SalesforceMalformedRequest

BASE = os.environ["SF_BASE_URL"].rstrip("/")
CLIENT_ID = os.environ["SF_CLIENT_ID"]
CLIENT_SECRET = os.environ["SF_CLIENT_SECRET"]
USERNAME = os.environ["SF_USERNAME"]
HERE = os.path.dirname(os.path.abspath(__file__))
JWT_KEY = os.environ.get(
    "SF_JWT_KEY", os.path.join(HERE, "..", "fixtures", "jwt", "sandbox-test-only-private.pem")
)
HOSTPORT = urlparse(BASE).netloc


class Redirect(requests.Session):
    """Sends what the client addresses to the real hosts to the sandbox instead."""

    def request(self, method, url, *args, **kwargs):
        for real in (f"https://{HOSTPORT}", "https://login.salesforce.com"):
            if url.startswith(real):
                url = BASE + url[len(real):]
        return super().request(method, url, *args, **kwargs)


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name} {detail}")
        sys.exit(1)
    print(f"ok   {name}")


def admin(method, path, body=None):
    r = requests.request(method, BASE + path, json=body, timeout=10)
    r.raise_for_status()
    return r.json() if r.content else None


RUN = str(int(time.time() * 1000))


def main():
    admin("DELETE", "/__sandbox/log")
    r = requests.post(
        BASE + "/services/oauth2/token",
        auth=(CLIENT_ID, CLIENT_SECRET),
        data={"grant_type": "client_credentials"},
        timeout=10,
    )
    check("client-credentials token", r.status_code == 200, r.text)
    token = r.json()
    sf = Salesforce(
        instance_url=f"https://{HOSTPORT}",
        session_id=token["access_token"],
        session=Redirect(),
        version="62.0",
    )

    total = sf.query("SELECT COUNT() FROM Lead")["totalSize"]
    check("COUNT() query", total > 200, f"totalSize={total}")

    rows = sf.query_all(
        "SELECT Id, LastName, SystemModstamp FROM Lead ORDER BY SystemModstamp, Id",
        headers={"Sforce-Query-Options": "batchSize=200"},
    )
    ids = [rec["Id"] for rec in rows["records"]]
    check("query_all follows nextRecordsUrl to the end", len(ids) == total, f"{len(ids)} of {total}")
    check("no record twice across pages", len(set(ids)) == len(ids))
    counts = admin("GET", "/__sandbox/log?system=salesforce")["counts"]["salesforce"]
    check("pages of batchSize=200", counts.get("query_more", 0) == (total - 1) // 200, json.dumps(counts))

    deleted_visible = sf.query_all("SELECT Id FROM Lead", include_deleted=True)["totalSize"]
    check("queryAll", deleted_visible >= total)

    check("api_usage parsed from Sforce-Limit-Info", "api-usage" in sf.api_usage, str(sf.api_usage))
    limits = sf.limits()
    check("limits()", limits["DailyApiRequests"]["Max"] > 0, json.dumps(limits.get("DailyApiRequests")))

    described = sf.MQL__c.describe()
    ext = [f for f in described["fields"] if f["name"] == "External_Id__c"]
    check("describe MQL__c has the external id", ext and ext[0]["externalId"] is True)

    status = sf.MQL__c.upsert(f"External_Id__c/compat-1-{RUN}", {"Status__c": "Open", "Score_At_MQL__c": 88})
    check("sObject upsert creates (201)", status == 201, str(status))
    status = sf.MQL__c.upsert(f"External_Id__c/compat-1-{RUN}", {"Status__c": "Working"})
    check("sObject upsert updates (200 in v46+)", status == 200, str(status))
    record = sf.MQL__c.get_by_custom_id("External_Id__c", f"compat-1-{RUN}")
    check("get_by_custom_id", record["Status__c"] == "Working", json.dumps(record)[:200])
    sf.MQL__c.update(record["Id"], {"Status__c": "Rejected", "Rejection_Reason__c": "Duplicate"})
    history = sf.query(
        f"SELECT Field, OldValue, NewValue FROM MQL__History WHERE ParentId = '{record['Id']}'"
    )["records"]
    check("field history for tracked fields", any(h["Field"] == "Rejection_Reason__c" for h in history))

    created = sf.restful(
        "composite/sobjects",
        method="POST",
        data=json.dumps({
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "MQL__c"}, "External_Id__c": f"compat-2-{RUN}", "Status__c": "Open"},
                {"attributes": {"type": "MQL__c"}, "Nope__c": 1},
            ],
        }),
    )
    check("collection create: per-record results", created[0]["success"] and not created[1]["success"], json.dumps(created))
    check("collection errors use statusCode", created[1]["errors"][0]["statusCode"] == "INVALID_FIELD")
    upserted = sf.restful(
        "composite/sobjects/MQL__c/External_Id__c",
        method="PATCH",
        data=json.dumps({
            "allOrNone": True,
            "records": [
                {"attributes": {"type": "MQL__c"}, "External_Id__c": f"compat-2-{RUN}", "Status__c": "Working"},
                {"attributes": {"type": "MQL__c"}, "External_Id__c": f"compat-3-{RUN}", "Status__c": "Open"},
            ],
        }),
    )
    check("collection upsert: created flags", [u["created"] for u in upserted] == [False, True], json.dumps(upserted))
    updated = sf.restful(
        "composite/sobjects",
        method="PATCH",
        data=json.dumps({"records": [{"attributes": {"type": "MQL__c"}, "id": upserted[1]["id"], "Status__c": "Working"}]}),
    )
    check("collection update", updated[0]["success"] is True, json.dumps(updated))

    try:
        sf.query("SELECT Bogus FROM Lead")
        check("bad SOQL raises", False)
    except SalesforceMalformedRequest as e:
        check("bad SOQL -> SalesforceMalformedRequest INVALID_FIELD", e.content[0]["errorCode"] == "INVALID_FIELD")

    rows = 0
    for csv_text in sf.bulk2.Lead.query("SELECT Id, Email FROM Lead", max_records=200, wait=0):
        rows += max(0, len(csv_text.strip().splitlines()) - 1)
    check("Bulk API 2.0 query with locator paging", rows == total, f"{rows} of {total}")

    # Bulk API 2.0 ingest: simple-salesforce creates, uploads, closes, polls until the job is
    # done (the sandbox takes two polls) and reads the counts; then the same keys again.
    keys = [f"compat-{RUN}-{i}" for i in range(25)]
    first = sf.bulk2.MQL__c.upsert(
        records=[{"External_Id__c": k, "Status__c": "Open", "Segment__c": 'EMEA, "x"'} for k in keys],
        external_id_field="External_Id__c", wait=0,
    )
    again = sf.bulk2.MQL__c.upsert(
        records=[{"External_Id__c": k, "Status__c": "Working"} for k in keys],
        external_id_field="External_Id__c", wait=0,
    )
    created = sf.query(f"SELECT Status__c, Segment__c FROM MQL__c WHERE External_Id__c LIKE 'compat-{RUN}-%'")
    check("Bulk API 2.0 ingest upsert, twice by the same external ids",
          [r["numberRecordsProcessed"] for r in first + again] == [25, 25]
          and created["totalSize"] == 25
          and all(r["Status__c"] == "Working" and r["Segment__c"] == 'EMEA, "x"' for r in created["records"]),
          f"{first} {again} {created['totalSize']}")

    admin("POST", "/__sandbox/faults", {"system": "salesforce", "kind": "query", "times": 1, "action": {"type": "expire_tokens"}})
    try:
        sf.query("SELECT Id FROM User")
        check("expired session raises", False)
    except SalesforceExpiredSession:
        check("expired session -> SalesforceExpiredSession", True)
    admin("DELETE", "/__sandbox/faults")

    if os.path.exists(JWT_KEY):
        jwt_sf = Salesforce(
            username=USERNAME,
            consumer_key=CLIENT_ID,
            privatekey_file=JWT_KEY,
            session=Redirect(),
            version="62.0",
        )
        n = jwt_sf.query("SELECT COUNT() FROM User")["totalSize"]
        check("JWT bearer login (RS256 assertion) through simple-salesforce", n > 0)
    else:
        print(f"skip JWT bearer login: no key at {JWT_KEY}")

    print("all simple-salesforce checks passed")


if __name__ == "__main__":
    main()
