#!/usr/bin/env node
// Checks the mqlsync Salesforce sandbox with the public jsforce client (v3), unchanged.
// jsforce takes the instance URL as given, so no redirection is needed. Reads SF_BASE_URL,
// SF_CLIENT_ID, SF_CLIENT_SECRET, SF_USERNAME; prints each check; exits non-zero on failure.
'use strict';
const jsforce = require('jsforce');

const BASE = process.env.SF_BASE_URL.replace(/\/$/, '');
const CLIENT_ID = process.env.SF_CLIENT_ID;
const CLIENT_SECRET = process.env.SF_CLIENT_SECRET;

function check(name, ok, detail) {
  if (!ok) {
    console.log(`FAIL ${name} ${detail === undefined ? '' : detail}`);
    process.exit(1);
  }
  console.log(`ok   ${name}`);
}

const RUN = String(Date.now());

async function main() {
  const basic = Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64');
  const res = await fetch(`${BASE}/services/oauth2/token`, {
    method: 'POST',
    headers: { Authorization: `Basic ${basic}`, 'Content-Type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials',
  });
  check('client-credentials token', res.status === 200, res.status);
  const token = await res.json();
  const conn = new jsforce.Connection({ instanceUrl: token.instance_url, accessToken: token.access_token, version: '62.0' });

  const count = await conn.query('SELECT COUNT() FROM Lead');
  check('COUNT() query', count.totalSize > 200, count.totalSize);
  const all = await conn.query('SELECT Id, LastName FROM Lead ORDER BY SystemModstamp, Id', {
    autoFetch: true,
    maxFetch: 1000000,
    headers: { 'Sforce-Query-Options': 'batchSize=200' },
  });
  const ids = new Set(all.records.map((r) => r.Id));
  check('autoFetch follows nextRecordsUrl', all.records.length === count.totalSize, `${all.records.length} of ${count.totalSize}`);
  check('no record twice', ids.size === all.records.length);

  const limits = await conn.limits();
  check('limits()', limits.DailyApiRequests.Max > 0);

  const one = await conn.sobject('MQL__c').upsert({ External_Id__c: `js-1-${RUN}`, Status__c: 'Open' }, 'External_Id__c');
  check('single upsert creates', one.success === true && one.created === true, JSON.stringify(one));
  const again = await conn.sobject('MQL__c').upsert({ External_Id__c: `js-1-${RUN}`, Status__c: 'Working' }, 'External_Id__c');
  check('single upsert updates', again.success === true && again.created === false, JSON.stringify(again));

  const many = await conn.sobject('MQL__c').upsert(
    [
      { External_Id__c: `js-1-${RUN}`, Status__c: 'Rejected' },
      { External_Id__c: `js-2-${RUN}`, Status__c: 'Open' },
    ],
    'External_Id__c',
    { allOrNone: true },
  );
  check('collection upsert', many.length === 2 && many.every((r) => r.success), JSON.stringify(many));
  const created = await conn.sobject('MQL__c').create(
    [{ External_Id__c: `js-3-${RUN}`, Status__c: 'Open' }, { Nope__c: 1 }],
    { allOrNone: false },
  );
  check('collection create with one bad record', created[0].success && !created[1].success, JSON.stringify(created));
  check('per-record error code', created[1].errors[0].errorCode === 'INVALID_FIELD' || created[1].errors[0].statusCode === 'INVALID_FIELD', JSON.stringify(created[1]));

  const described = await conn.sobject('MQL__c').describe();
  check('describe', described.fields.some((f) => f.name === 'External_Id__c' && f.externalId));

  try {
    await conn.query('SELECT Bogus FROM Lead');
    check('bad SOQL rejects', false);
  } catch (e) {
    check('bad SOQL -> INVALID_FIELD', e.errorCode === 'INVALID_FIELD', `${e.errorCode} ${e.message}`);
  }

  const rows = await (await conn.bulk2.query('SELECT Id, Email FROM Lead')).toArray();
  check('Bulk API 2.0 query', rows.length === count.totalSize, `${rows.length} of ${count.totalSize}`);

  console.log('all jsforce checks passed');
}

main().catch((e) => {
  console.log(`FAIL unexpected error: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
