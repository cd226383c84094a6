// The WebFlicks demo page: search, a customer picker, Watch now / Buy now.
// No build step, no polling: the page follows the shown customer's entitlement changes over
// Server-Sent Events (/v1/changes/stream) and re-reads only when one arrives, with
// min_event=<the change's event> so that the read reflects it (read your own writes).
"use strict";

const RECONNECT_MS = 3000;
const params = new URLSearchParams(location.search);
// The page holds a READ token only (ENTITLED_API_TOKEN), for this tab's session: given as
// #token=... (a fragment never reaches a server or its logs; `entitled dev` prints such a
// link) or typed when the API answers 401. Never the admin token, never in localStorage.
const TOKEN_KEY = "entitled.read-token";
localStorage.removeItem("entitled.token"); // what older pages kept there
const fragment = new URLSearchParams(location.hash.slice(1));
const given = fragment.get("token") || params.get("token");
if (given) {
  sessionStorage.setItem(TOKEN_KEY, given);
  const clean = new URL(location);
  clean.searchParams.delete("token");
  clean.hash = "";
  history.replaceState(null, "", clean); // out of the address bar, the history, a copied link
}

const $ = (id) => document.getElementById(id);
const state = {
  q: params.get("q") || "", customer: params.get("customer") || "", last: "", groups: [],
};

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) {
    const token = prompt("This API needs a read token (ENTITLED_API_TOKEN):");
    if (token) { sessionStorage.setItem(TOKEN_KEY, token); return api(path); }
  }
  return response;
}

// A stable colour pair per movie, so posters look designed without images.
function poster(movieId) {
  let h = 0;
  for (const c of movieId) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  const a = h % 360, b = (a + 40 + (h >> 9) % 80) % 360;
  return `linear-gradient(135deg, hsl(${a} 65% 38%), hsl(${b} 70% 18%))`;
}

function reasonText(hit) {
  if (hit.reason === "subscription") {
    const mine = hit.groups.filter((g) => state.groups.includes(g));
    return `Included in your ${(mine.length ? mine : hit.groups).join(" / ")} subscription`;
  }
  if (hit.reason === "purchase") return "You own this movie";
  return hit.groups.length ? `In the ${hit.groups.join(" / ")} package` : "Purchase only";
}

function card(hit, before) {
  const el = document.createElement("article");
  el.className = "card";
  el.dataset.movieId = hit.movie_id;
  el.dataset.available = String(hit.available);
  const p = document.createElement("div");
  p.className = "poster";
  p.style.background = poster(hit.movie_id);
  p.textContent = hit.title;
  const body = document.createElement("div");
  body.className = "body";
  const chips = document.createElement("div");
  chips.className = "chips";
  for (const g of hit.groups) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = g;
    chips.append(chip);
  }
  if (!hit.groups.length) {
    const chip = document.createElement("span");
    chip.className = "chip solo";
    chip.textContent = "single title";
    chips.append(chip);
  }
  const reason = document.createElement("div");
  reason.className = "reason" + (hit.available ? " ok" : "");
  reason.textContent = reasonText(hit);
  const cta = document.createElement("button");
  cta.className = "cta " + (hit.available ? "watch" : "buy");
  cta.textContent = hit.available ? "Watch now" : "Buy now";
  body.append(chips, reason, cta);
  el.append(p, body);
  if (before && before[hit.movie_id] === false && hit.available) el.classList.add("flash");
  return el;
}

// `minEvent`: the event behind a change the stream announced; the API answers once it is
// folded (409 with the current answer if not within `wait`: shown all the same).
function consistent(minEvent) {
  return minEvent ? `&min_event=${encodeURIComponent(minEvent)}&wait=5` : "";
}

async function refresh(minEvent) {
  if (!state.customer) {
    $("summary").textContent = "Pick a customer to see what they can watch.";
  }
  const customer = state.customer || "anonymous";
  const url = `/v1/search?customer=${encodeURIComponent(customer)}` +
    `&q=${encodeURIComponent(state.q)}&limit=48` + consistent(minEvent);
  let response;
  try {
    response = await api(url);
  } catch (err) {
    $("live").classList.add("stale");
    return;
  }
  if (state.customer) await summary(minEvent);
  const text = await response.text();
  if (!response.ok && response.status !== 409) {
    $("error").hidden = false;
    $("error").textContent = JSON.parse(text).error || `Error ${response.status}`;
    return;
  }
  $("error").hidden = true;
  // The reasons name the customer's own groups: a change there re-renders too.
  const key = state.groups.join(",") + "\n" + text;
  if (key === state.last) return; // nothing changed: keep the DOM (and focus) as it is
  const before = {};
  for (const el of $("results").children) before[el.dataset.movieId] = el.dataset.available === "true";
  state.last = key;
  const data = JSON.parse(text);
  $("results").replaceChildren(...data.results.map((hit) => card(hit, before)));
  $("empty").hidden = data.results.length > 0;
}

async function summary(minEvent) {
  const query = minEvent ? `?${consistent(minEvent).slice(1)}` : "";
  const response = await api(
    `/v1/customers/${encodeURIComponent(state.customer)}/entitlements${query}`);
  const el = $("summary");
  if (!response.ok && response.status !== 404 && response.status !== 409) return;
  const e = response.status === 404 ? {} : await response.json();
  if (!e.groups) { // unknown to the projection (404, or a 409 without an answer yet)
    state.groups = [];
    el.innerHTML = "";
    el.append(bold(state.customer), " has no subscriptions or purchases yet.");
    return;
  }
  state.groups = e.groups;
  el.innerHTML = "";
  el.append(bold(e.name || e.email || e.customer));
  if (e.groups.length) {
    el.append(" subscribes to ");
    for (const g of e.groups) {
      const pill = document.createElement("span");
      pill.className = "pill";
      pill.textContent = g;
      el.append(pill);
    }
  } else {
    el.append(" has no active subscription");
  }
  const owned = e.movie_ids.length;
  el.append(owned ? ` and owns ${owned} movie${owned > 1 ? "s" : ""}` : "");
}

function bold(text) {
  const b = document.createElement("b");
  b.textContent = text;
  return b;
}

async function loadCustomers() {
  // The customer list needs the admin token: with a read token (403) the picker takes typed ids.
  const response = await api("/v1/customers?limit=200");
  if (!response.ok) return;
  const data = await response.json();
  $("customers").replaceChildren(...data.customers.map((c) => {
    const o = document.createElement("option");
    o.value = c.id;
    o.label = [c.name, c.email].filter(Boolean).join(" · ") || c.id;
    return o;
  }));
  if (!state.customer && data.customers.length) {
    state.customer = data.customers[0].id;
    $("customer").value = state.customer;
    schedule();
  }
}

// The change stream of the shown customer. A new stream starts at the feed's current end;
// its first `ready` event re-reads once (closing the gap between the first read and the
// stream's start). An EventSource reconnects by itself with Last-Event-ID and loses nothing;
// after an error status it gives up, so the page opens a new one from the last id it saw.
let stream = null;
let reconnect = null;
function follow(after) {
  if (stream) stream.close();
  clearTimeout(reconnect);
  const query = new URLSearchParams();
  if (state.customer) query.set("customer", state.customer);
  if (after) query.set("after", after);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) query.set("token", token); // an EventSource cannot send an Authorization header
  const source = new EventSource(`/v1/changes/stream?${query}`);
  let first = !after;
  stream = source;
  source.addEventListener("ready", async () => {
    $("live").classList.remove("stale");
    if (first) { first = false; await refresh(); }
    document.body.dataset.stream = "ready"; // following (the tests wait for this)
  });
  source.addEventListener("change", (ev) => {
    const change = JSON.parse(ev.data);
    if (change.customer === state.customer) {
      state.last = "";
      refresh(change.event_id);
    }
  });
  source.onerror = () => {
    $("live").classList.add("stale");
    document.body.dataset.stream = "reconnecting";
    if (source.readyState === EventSource.CLOSED && stream === source) {
      reconnect = setTimeout(() => follow(source.lastEventId || after), RECONNECT_MS);
    }
  };
}

let timer = null;
let followed = null;
function schedule() {
  clearTimeout(timer);
  state.last = "";
  timer = setTimeout(() => refresh(), 150);
  if (state.customer !== followed) { followed = state.customer; follow(); }
  const url = new URL(location);
  url.searchParams.set("q", state.q);
  url.searchParams.set("customer", state.customer);
  url.searchParams.delete("token");
  url.hash = ""; // the token stays in sessionStorage, not in the address bar or history
  history.replaceState(null, "", url);
}

$("q").value = state.q;
$("customer").value = state.customer;
$("q").addEventListener("input", () => { state.q = $("q").value; schedule(); });
$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); schedule(); });
$("customer").addEventListener("change", () => {
  state.customer = $("customer").value.trim();
  schedule();
});
$("customer").addEventListener("focus", loadCustomers); // the picker's list, fresh when used
refresh();
loadCustomers();
followed = state.customer;
follow();
