// scaleout in a real browser, through the gateway: register, log out and back in, write a post,
// comment on it, and see the comment come back from the spam and sentiment workers with its
// sentiment badge. Run by tests/browser/run.sh (`make test-browser`), which starts the stack and
// sets BASE_URL; the steps share one browser and run in order.
//
// JavaScript is off in the browser: every page must work without it.
//
//   BASE_URL                 the gateway (required)
//   CHROMIUM                 the browser (/usr/bin/chromium, Debian's package)
//   SCREENSHOTS              where each page's PNG goes (loadtest/results/browser)
//   COMMENT_DEADLINE_SECS    how long the comment may take to come through the workers (120)

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE_URL = process.env.BASE_URL;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOTS = process.env.SCREENSHOTS || path.resolve('loadtest/results/browser');
const COMMENT_DEADLINE_MS = 1000 * Number(process.env.COMMENT_DEADLINE_SECS || 120);

// Generous bounds: CI is a busy 2-core machine running debug builds.
const ACTION_TIMEOUT_MS = 30_000;
const NAVIGATION_TIMEOUT_MS = 60_000;
const STEP_TIMEOUT_MS = 180_000;

// Unique per run, so the test can run against a database that already has users.
const run = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
const username = `browser-${run}`;
const password = 'browser-test-password';
const title = `Written in a browser ${run}`;
const postBody = 'A post written by the end-to-end test.\nIt has two lines.';
// Plainly friendly, so the spam model lets it through and VADER scores it positive.
const commentBody = `Thank you, this is a really helpful and wonderful post! (${run})`;

let profile;
let context;
let page;
const state = { registered: false, signedIn: false, postUrl: null, commented: false };

async function screenshot(name) {
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

// Navigates and insists on a 2xx answer: an error page that renders fine is still a failure.
async function visit(url) {
  const response = await page.goto(url);
  assert.ok(response, `no response for ${url}`);
  assert.ok(response.ok(), `${url} answered ${response.status()}`);
  return response;
}

// Submits the form holding `button` and waits for the page the server answers with.
async function submit(button) {
  const [response] = await Promise.all([page.waitForNavigation(), button.click()]);
  assert.ok(response, 'the form submission led nowhere');
  return response;
}

function requirePrevious(t, condition, what) {
  if (!condition) {
    t.skip(`${what} did not happen in an earlier step`);
    return false;
  }
  return true;
}

describe('scaleout in a browser, through the gateway', { timeout: 20 * 60_000 }, () => {
  before(async () => {
    assert.ok(BASE_URL, 'BASE_URL must name the gateway; run this through tests/browser/run.sh');
    await mkdir(SCREENSHOTS, { recursive: true });
    profile = await mkdtemp(path.join(tmpdir(), 'scaleout-chromium-'));
    // launchPersistentContext is how Playwright takes a --user-data-dir: a fresh one per run.
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      javaScriptEnabled: false,
      viewport: { width: 1024, height: 768 },
      timeout: NAVIGATION_TIMEOUT_MS,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    context.setDefaultTimeout(ACTION_TIMEOUT_MS);
    context.setDefaultNavigationTimeout(NAVIGATION_TIMEOUT_MS);
    page = context.pages()[0] ?? (await context.newPage());
  });

  after(async () => {
    await context?.close();
    if (profile) await rm(profile, { recursive: true, force: true });
  });

  it('shows the front page to an anonymous reader', { timeout: STEP_TIMEOUT_MS }, async () => {
    await visit(`${BASE_URL}/`);
    assert.equal(await page.title(), 'scaleout');
    await page.getByRole('heading', { name: 'Latest posts' }).waitFor();
    await page.getByRole('link', { name: 'Register' }).waitFor();
    await screenshot('01-home-anonymous');
  });

  it('registers a new account and is signed in by it', { timeout: STEP_TIMEOUT_MS }, async () => {
    await visit(`${BASE_URL}/register`);
    await page.getByLabel('Username').fill(username);
    await page.getByLabel('Password').fill(password);
    await screenshot('02-register');
    const response = await submit(page.getByRole('button', { name: 'Register' }));
    assert.equal(response.status(), 200, `registration ended on ${response.url()} with ${response.status()}`);
    await page.getByText(`Signed in as ${username}`).waitFor();
    state.registered = true;
  });

  it('logs out, then logs back in with the same password', { timeout: STEP_TIMEOUT_MS }, async (t) => {
    if (!requirePrevious(t, state.registered, 'registration')) return;
    await submit(page.getByRole('button', { name: 'Log out' }));
    await page.getByRole('link', { name: 'Log in' }).waitFor();
    assert.equal(await page.getByText('Signed in as').count(), 0, 'still signed in after logging out');

    await visit(`${BASE_URL}/login`);
    await page.getByLabel('Username').fill(username);
    await page.getByLabel('Password').fill(password);
    await screenshot('03-login');
    const response = await submit(page.getByRole('button', { name: 'Log in' }));
    assert.equal(response.status(), 200, `login ended on ${response.url()} with ${response.status()}`);
    await page.getByText(`Signed in as ${username}`).waitFor();
    state.signedIn = true;
  });

  it('writes a post that opens on its own page', { timeout: STEP_TIMEOUT_MS }, async (t) => {
    if (!requirePrevious(t, state.signedIn, 'logging in')) return;
    await page.getByRole('link', { name: 'New post' }).click();
    await page.getByRole('heading', { name: 'New post' }).waitFor();
    await page.getByLabel('Title').fill(title);
    await page.getByLabel('Body').fill(postBody);
    await screenshot('04-new-post');
    const response = await submit(page.getByRole('button', { name: 'Publish' }));
    assert.equal(response.status(), 200, `publishing ended on ${response.url()} with ${response.status()}`);
    assert.match(new URL(page.url()).pathname, /^\/posts\/\d+$/, `publishing led to ${page.url()}`);
    await page.getByRole('heading', { name: title }).waitFor();
    assert.match(await page.locator('article .text').innerText(), /It has two lines\./);
    state.postUrl = new URL(page.url()).pathname;
  });

  it('accepts a comment and says it awaits moderation', { timeout: STEP_TIMEOUT_MS }, async (t) => {
    if (!requirePrevious(t, state.postUrl, 'writing the post')) return;
    await page.getByLabel('Your comment').fill(commentBody);
    const response = await submit(page.getByRole('button', { name: 'Comment' }));
    assert.equal(response.status(), 200, `commenting ended on ${response.url()} with ${response.status()}`);
    await page.getByText('awaiting moderation').waitFor();
    await screenshot('05-comment-pending');
    state.commented = true;
  });

  it('shows the comment with its sentiment badge once the workers have checked it', { timeout: COMMENT_DEADLINE_MS + STEP_TIMEOUT_MS }, async (t) => {
    if (!requirePrevious(t, state.commented, 'commenting')) return;
    const comment = page.locator('.comment', { hasText: commentBody });
    const deadline = Date.now() + COMMENT_DEADLINE_MS;
    let visits = 0;
    // Poll by reloading: the page has no JavaScript to update itself.
    for (;;) {
      await visit(`${BASE_URL}${state.postUrl}`);
      visits += 1;
      if ((await comment.count()) > 0 && (await comment.locator('.badge').count()) > 0) break;
      if (Date.now() >= deadline) {
        await screenshot('06-post-without-comment');
        assert.fail(
          `after ${COMMENT_DEADLINE_MS / 1000} s and ${visits} reloads the comment is ` +
            `${(await comment.count()) > 0 ? 'shown without its sentiment badge' : 'still not shown'}; ` +
            'see the relay and worker logs',
        );
      }
      await page.waitForTimeout(1000);
    }
    const badge = (await comment.locator('.badge').innerText()).trim();
    assert.equal(badge, 'positive', `a friendly comment was labelled ${badge}`);
    await screenshot('06-post-with-comment');

    // The same page on a phone: 390 CSS pixels wide, nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await visit(`${BASE_URL}${state.postUrl}`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(overflow <= 390, `the post page is ${overflow} px wide on a 390 px screen`);
    await screenshot('07-post-phone');
    await visit(`${BASE_URL}/`);
    await page.getByRole('link', { name: title }).waitFor();
    await screenshot('08-home-phone');
    await page.setViewportSize({ width: 1024, height: 768 });
  });
});
