// The WebFlicks demo page: search, a customer picker, Watch now / Buy now.
// No build step. Availability is polled every 1.5 s so a webhook shows without a reload.
"use strict";

const POLL_MS = 1500;
const params = new URLSearchParams(location.search);
if (params.get("token")) localStorage.setItem("entitled.token", params.get("token"));

const $ = (id) => document.getElementById(id);
const state = {
  q: params.get("q") || "", customer: params.get("customer") || "", last: "", groups: [],
};

function headers() {
  const token = localStorage.getItem("entitled.token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) {
    const token = prompt("This API needs a token (ENTITLED_API_TOKEN):");
    if (token) { localStorage.setItem("entitled.token", token); return api(path); }
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

async function refresh() {
  if (!state.customer) {
    $("summary").textContent = "Pick a customer to see what they can watch.";
  }
  const customer = state.customer || "anonymous";
  const url = `/v1/search?customer=${encodeURIComponent(customer)}` +
    `&q=${encodeURIComponent(state.q)}&limit=48`;
  let response;
  try {
    response = await api(url);
  } catch (err) {
    $("live").classList.add("stale");
    return;
  }
  $("live").classList.remove("stale");
  if (state.customer) await summary();
  const text = await response.text();
  if (!response.ok) {
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

async function summary() {
  const response = await api(`/v1/customers/${encodeURIComponent(state.customer)}/entitlements`);
  const el = $("summary");
  if (response.status === 404) {
    state.groups = [];
    el.innerHTML = "";
    el.append(bold(state.customer), " has no subscriptions or purchases yet.");
    return;
  }
  if (!response.ok) return;
  const e = await response.json();
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

let timer = null;
function schedule() {
  clearTimeout(timer);
  state.last = "";
  timer = setTimeout(refresh, 150);
  const url = new URL(location);
  url.searchParams.set("q", state.q);
  url.searchParams.set("customer", state.customer);
  url.searchParams.delete("token");
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
refresh();
loadCustomers();
setInterval(refresh, POLL_MS);
setInterval(loadCustomers, 10 * POLL_MS);
