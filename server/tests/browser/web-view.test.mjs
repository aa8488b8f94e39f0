// The staff web view in a real browser: Debian's Chromium (/usr/bin/chromium), headless,
// driven by playwright-core. Run by scripts/test-browser.sh, which starts a seeded server and
// passes its address in DOORSTEP_URL and the artefact folder in ARTEFACTS.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const base = process.env.DOORSTEP_URL;
const artefacts = process.env.ARTEFACTS;
assert.ok(base, 'DOORSTEP_URL is set');
assert.ok(artefacts, 'ARTEFACTS is set');
fs.mkdirSync(artefacts, { recursive: true });

// The server printed its address once listening; it must also say it is ready.
const ready = await fetch(`${base}/ready`);
assert.equal(ready.status, 200, 'the server is ready');

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});

try {
  const context = await browser.newContext({
    acceptDownloads: true,
    viewport: { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  // Console errors include content-security-policy violations: the pages must cause none.
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('response', (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()} for ${response.url()}`);
  });
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });

  // The officer's phone uploads the drawing the seeded case file records (as the phone does:
  // start, one chunk, a signed receipt).
  const drawing = fs.readFileSync(new URL('./demo-drawing.png', import.meta.url));
  const sha256 = crypto.createHash('sha256').update(drawing).digest('hex');
  const signIn = await fetch(`${base}/api/v1/auth/sign-in`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      username: 'officer',
      password: 'doorstep-demo',
      device_name: 'browser test phone',
      actor_id: crypto.randomBytes(16).toString('hex'),
    }),
  });
  assert.equal(signIn.status, 200, 'the officer signs in');
  const { access_token: token } = await signIn.json();
  const auth = { authorization: `Bearer ${token}` };
  const uploads = `${base}/api/v1/cases/case-demo-1/evidence/uploads`;
  const started = await fetch(uploads, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ sha256, size: drawing.length, media_type: 'image/png' }),
  });
  assert.equal(started.status, 201, 'the upload starts');
  const { upload_id: uploadId } = await started.json();
  const chunk = await fetch(`${uploads}/${uploadId}?offset=0`, {
    method: 'PUT',
    headers: { ...auth, 'content-type': 'application/octet-stream' },
    body: drawing,
  });
  assert.equal(chunk.status, 200, 'the chunk completes the upload');
  const { receipt } = await chunk.json();
  assert.equal(receipt.sha256, sha256);

  // Sign in.
  await page.goto(`${base}/sign-in`);
  await page.fill('#username', 'lead');
  await page.fill('#password', 'doorstep-demo');
  await Promise.all([page.waitForURL('**/cases'), page.click('form.signin button[type=submit]')]);
  assert.match(await page.textContent('h1'), /My caseload/);

  // Open the case from the caseload.
  await Promise.all([
    page.waitForURL('**/cases/case-demo-1'),
    page.click('a:has-text("ATT-DEMO-0001")'),
  ]);
  assert.match(await page.textContent('h1'), /Case ATT-DEMO-0001/);
  assert.match(await page.textContent('#readiness'), /days left/);
  // The drawing shows as a thumbnail that the browser loaded (CSP and access allow it), with
  // its receipt.
  const thumb = page.locator(`img.thumb[src$="${sha256}"]`);
  await thumb.scrollIntoViewIfNeeded();
  await page.waitForFunction(
    (hash) => {
      const img = document.querySelector(`img.thumb[src$="${hash}"]`);
      return img && img.complete && img.naturalWidth > 0;
    },
    sha256,
  );
  assert.equal(await thumb.evaluate((img) => img.naturalWidth), 120, 'the image decoded');
  assert.ok(
    (await page.textContent('.evidence-file ul.receipts')).includes(receipt.receipt_id.slice(0, 12)),
    'the receipt is shown',
  );
  await page
    .locator('article.record', { has: thumb })
    .screenshot({ path: path.join(artefacts, 'evidence-item.png') });
  await page.screenshot({ path: path.join(artefacts, 'case-page.png'), fullPage: true });

  // Resolve the open conflict.
  assert.equal(await page.locator('article.conflict').count(), 1);
  await Promise.all([
    page.waitForURL(/resolved=1/),
    page.locator('article.conflict button:has-text("Keep this value")').first().click(),
  ]);
  assert.match(await page.textContent('p.notice'), /Conflict resolved/);
  assert.equal(await page.locator('article.conflict').count(), 0);
  assert.match(await page.textContent('#conflicts'), /by Demo Attendance Lead/);

  // Download the evidence pack as PDF.
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click('a:has-text("Evidence pack (PDF)")'),
  ]);
  const pdfPath = path.join(artefacts, 'evidence-pack-ATT-DEMO-0001.pdf');
  await download.saveAs(pdfPath);
  const pdf = fs.readFileSync(pdfPath);
  assert.equal(pdf.subarray(0, 5).toString('latin1'), '%PDF-');
  assert.ok(pdf.toString('latin1').includes('ATT-DEMO-0001'), 'the PDF names the case');

  // The print-ready HTML pack.
  await page.goto(`${base}/cases/case-demo-1/evidence-pack`);
  assert.match(await page.textContent('h1'), /Evidence pack: case ATT-DEMO-0001/);

  // Tablet width: the case page must not scroll sideways.
  await page.setViewportSize({ width: 768, height: 1024 });
  await page.goto(`${base}/cases/case-demo-1`);
  const overflow = await page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  assert.ok(overflow <= 0, `the case page overflows a 768px screen by ${overflow}px`);
  await page.screenshot({ path: path.join(artefacts, 'case-page-768.png'), fullPage: true });
  await page.screenshot({ path: path.join(artefacts, 'case-page-768-top.png') });
  await page.goto(`${base}/cases`);
  await page.screenshot({ path: path.join(artefacts, 'caseload-768.png') });

  assert.deepEqual(problems, []);
  console.log('web view browser test: passed (screenshots and PDF in %s)', artefacts);
} finally {
  await browser.close();
}
