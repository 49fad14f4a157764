// The head-office dashboard: reads the JSON views with the token from the URL fragment
// (#token=..., never sent to the server in a URL or kept in its logs) and draws plain SVG.
// No framework, no build step, nothing loaded from the internet. Member names and ids are
// only ever set as text, never as HTML.
"use strict";
(function () {
  var token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
  var SVG = "http://www.w3.org/2000/svg";
  var LEVELS = { top2: "top 2%", top5: "top 5%", top10: "top 10%", top15: "top 15%", top20: "top 20%", rest: "the rest" };
  var TIER_COLOURS = ["#2f6fd6", "#c58b00", "#7d8896", "#1f8a4c", "#8e44ad", "#d35400", "#16a085", "#95a5a6"];
  var tierColour = {};

  function fmtInt(n) { return Number(n || 0).toLocaleString("en-US"); }
  function fmtMoney(minor) {
    return (Number(minor || 0) / 100).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  function fmtPct(x) { return x == null ? "–" : (x * 100).toFixed(1) + "%"; }
  function fmtPts(x) { return (x >= 0 ? "+" : "") + (x * 100).toFixed(1) + " pts"; }
  function fmtAgo(ms, now) {
    if (!ms) return "never";
    var s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }
  function colourOf(tier) {
    if (!tierColour[tier]) tierColour[tier] = TIER_COLOURS[Object.keys(tierColour).length % TIER_COLOURS.length];
    return tierColour[tier];
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = String(text);
    return e;
  }
  function row(tbody, cells, attrs) {
    var tr = el("tr");
    for (var k in attrs || {}) tr.setAttribute(k, attrs[k]);
    cells.forEach(function (c) {
      var td = el("td", c.cls || null, c.text);
      if (c.k) td.setAttribute("data-k", c.k);
      if (c.node) td.appendChild(c.node);
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
    return tr;
  }

  function get(path) {
    return fetch(path, { headers: { Authorization: "Bearer " + token } }).then(function (r) {
      if (r.status === 401) throw new Error("HTTP 401: open this page with #token=YOUR_TOKEN (admin or viewer)");
      if (!r.ok) throw new Error("HTTP " + r.status + " from " + path);
      return r;
    });
  }
  function getJson(path) { return get(path).then(function (r) { return r.json(); }); }

  // --- pyramid ---------------------------------------------------------------------------
  function drawPyramid(levels) {
    var tbody = document.querySelector("#pyramid-table tbody");
    tbody.replaceChildren();
    levels.forEach(function (l) {
      row(tbody, [
        { text: LEVELS[l.level] || l.level },
        { k: "members", text: fmtInt(l.members) },
        { k: "spend", text: fmtMoney(l.spend_12m_minor) },
        { k: "share", text: fmtPct(l.share_of_spend) },
        { k: "average", text: fmtMoney(l.average_spend_minor) },
        { k: "up", cls: "up", text: l.moved_up ? "▲ " + fmtInt(l.moved_up) : "–" },
        { k: "down", cls: "down", text: l.moved_down ? "▼ " + fmtInt(l.moved_down) : "–" }
      ], { "data-level": l.level });
    });
    // Equal-height bands, narrow at the top: the shape is the point, the labels carry the numbers.
    var W = 520, H = 260, bandH = H / levels.length;
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "member pyramid" });
    levels.forEach(function (l, i) {
      // The top band is wide enough for its label: a pyramid, not a needle.
      var MIN = 0.5 * W;
      var topW = MIN + (W - MIN) * i / levels.length, botW = MIN + (W - MIN) * (i + 1) / levels.length;
      var y0 = i * bandH, y1 = y0 + bandH - 2, cx = W / 2;
      var shade = Math.round(35 + 150 * i / levels.length);
      s.appendChild(svg("polygon", {
        points: [cx - topW / 2, y0, cx + topW / 2, y0, cx + botW / 2, y1, cx - botW / 2, y1].join(" "),
        fill: "rgb(" + shade + "," + (shade + 40) + ",214)", "data-level": l.level
      }));
      s.appendChild(svg("text", { x: cx, y: y0 + bandH / 2 + 4, "text-anchor": "middle", fill: "#fff",
        style: "fill:" + (i < 3 ? "#fff" : "#1d2430") + ";font-weight:600" },
        (LEVELS[l.level] || l.level) + " · " + fmtInt(l.members) + " heads · " + fmtPct(l.share_of_spend) + " of spend"));
    });
    var box = document.getElementById("pyramid-chart");
    box.replaceChildren(s);
  }

  function drawPareto(points) {
    var W = 420, H = 300, P = 40;
    var x = function (v) { return P + v * (W - 2 * P); };
    var y = function (v) { return H - P - v * (H - 2 * P); };
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Pareto curve" });
    for (var g = 0; g <= 4; g++) {
      s.appendChild(svg("line", { "class": "grid", x1: x(0), x2: x(1), y1: y(g / 4), y2: y(g / 4) }));
      s.appendChild(svg("text", { x: P - 6, y: y(g / 4) + 4, "text-anchor": "end" }, (g * 25) + "%"));
      s.appendChild(svg("text", { x: x(g / 4), y: H - P + 16, "text-anchor": "middle" }, (g * 25) + "%"));
    }
    s.appendChild(svg("line", { "class": "axis", x1: x(0), y1: y(0), x2: x(1), y2: y(1), "stroke-dasharray": "4 4" }));
    s.appendChild(svg("polyline", {
      id: "pareto-line", fill: "none", stroke: "#2f6fd6", "stroke-width": 3,
      points: points.map(function (p) { return x(p.members_share) + "," + y(p.spend_share); }).join(" ")
    }));
    s.appendChild(svg("text", { x: W / 2, y: H - 4, "text-anchor": "middle" }, "share of members, best spenders first"));
    document.getElementById("pareto-chart").replaceChildren(s);
    // Spend share of the top 20 % of members, read off the curve.
    var at = function (m) {
      for (var i = 1; i < points.length; i++) {
        var a = points[i - 1], b = points[i];
        if (b.members_share >= m) {
          var t = b.members_share === a.members_share ? 1 : (m - a.members_share) / (b.members_share - a.members_share);
          return a.spend_share + t * (b.spend_share - a.spend_share);
        }
      }
      return points.length ? points[points.length - 1].spend_share : 0;
    };
    var note = document.getElementById("pareto-note");
    note.textContent = points.length > 1
      ? "The top 20% of members bring " + fmtPct(at(0.2)) + " of 12-month spend."
      : "No members yet.";
    note.setAttribute("data-top20", String(at(0.2)));
  }

  // --- funnel ----------------------------------------------------------------------------
  function drawFunnel(f) {
    document.getElementById("funnel-note").textContent = "Members per stage now; transitions since " + f.since + ".";
    var max = Math.max.apply(null, f.stages.map(function (s) { return s.members; }).concat([1]));
    var W = 520, rowH = 34, H = rowH * f.stages.length;
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "lifecycle funnel" });
    f.stages.forEach(function (st, i) {
      var w = Math.max(2, (W - 170) * st.members / max);
      s.appendChild(svg("text", { x: 0, y: i * rowH + 21 }, st.stage));
      s.appendChild(svg("rect", { x: 80 + (W - 170 - w) / 2, y: i * rowH + 4, width: w, height: rowH - 8, rx: 4,
        fill: st.stage === "lapsed" ? "#b3261e" : "#2f6fd6", "data-stage": st.stage }));
      s.appendChild(svg("text", { x: W, y: i * rowH + 21, "text-anchor": "end", "data-stage": st.stage }, fmtInt(st.members)));
    });
    document.getElementById("funnel-chart").replaceChildren(s);
    var tbody = document.querySelector("#funnel-moves tbody");
    tbody.replaceChildren();
    f.transitions.forEach(function (t) {
      row(tbody, [{ text: (t.from || "new") + " → " + t.to }, { k: "members", text: fmtInt(t.members) }],
        { "data-from": t.from || "", "data-to": t.to });
    });
    if (!f.transitions.length) row(tbody, [{ text: "none yet" }, { text: "" }]);
  }

  // --- overdue ---------------------------------------------------------------------------
  function overduePath(format) {
    var q = new URLSearchParams();
    var store = document.getElementById("overdue-store").value, tier = document.getElementById("overdue-tier").value;
    if (store) q.set("store", store);
    if (tier) q.set("tier", tier);
    if (format) q.set("format", format);
    return "/api/dashboard/overdue?" + q.toString();
  }
  function fillSelect(id, values) {
    var sel = document.getElementById(id), keep = sel.value;
    var have = Array.prototype.map.call(sel.options, function (o) { return o.value; });
    values.forEach(function (v) {
      if (v && have.indexOf(v) < 0) { var o = el("option", null, v); o.value = v; sel.appendChild(o); }
    });
    sel.value = keep;
  }
  function drawOverdue(o) {
    document.getElementById("overdue-note").textContent = fmtInt(o.total) + " members overdue on " + o.today +
      (o.members.length < o.total ? " (the " + o.members.length + " longest overdue listed)" : "");
    document.getElementById("overdue-note").setAttribute("data-total", String(o.total));
    // Bars per store and tier.
    var groups = o.groups.slice(0, 12), max = Math.max.apply(null, groups.map(function (g) { return g.members; }).concat([1]));
    var W = 520, rowH = 24, H = Math.max(rowH, rowH * groups.length);
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "overdue per store and tier" });
    groups.forEach(function (g, i) {
      var label = (g.store_id || "no store") + " · " + g.tier;
      s.appendChild(svg("text", { x: 0, y: i * rowH + 16 }, label));
      s.appendChild(svg("rect", { x: 200, y: i * rowH + 4, width: Math.max(2, (W - 260) * g.members / max), height: rowH - 8, rx: 3, fill: colourOf(g.tier) }));
      s.appendChild(svg("text", { x: W, y: i * rowH + 16, "text-anchor": "end" }, fmtInt(g.members)));
    });
    document.getElementById("overdue-chart").replaceChildren(s);
    var tbody = document.querySelector("#overdue-table tbody");
    tbody.replaceChildren();
    o.members.forEach(function (m) {
      row(tbody, [
        { text: (m.display_name || m.member_id) + " (" + m.member_id + ")" },
        { k: "tier", text: m.tier },
        { k: "store", text: m.store_id || "–" },
        { k: "last", text: m.last_visit || "–" },
        { k: "expected", text: m.expected_next_visit || "–" },
        { k: "days", text: fmtInt(m.overdue_days) }
      ], { "data-member": m.member_id });
    });
    fillSelect("overdue-store", o.groups.map(function (g) { return g.store_id; }));
    fillSelect("overdue-tier", o.groups.map(function (g) { return g.tier; }));
  }
  function downloadCsv() {
    get(overduePath("csv")).then(function (r) {
      var name = (r.headers.get("Content-Disposition") || "").replace(/.*filename="([^"]+)".*/, "$1") || "overdue.csv";
      return r.blob().then(function (b) {
        var a = el("a");
        a.href = URL.createObjectURL(b);
        a.download = name;
        document.body.appendChild(a);
        a.click();
        setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
      });
    }).catch(showError);
  }

  // --- stores ----------------------------------------------------------------------------
  function drawStores(d) {
    var stores = d.stores, now = d.now_ms;
    var sum = function (k) { return stores.reduce(function (a, s) { return a + (s[k] || 0); }, 0); };
    var fleet = document.getElementById("fleet");
    fleet.replaceChildren();
    [["present", "members in store now"], ["visits_today", "visits today"], ["alerts_raised", "alerts today"],
     ["alerts_converted", "converted"], ["gateways_online", "of " + fmtInt(sum("gateways")) + " gateways online"]
    ].forEach(function (k) {
      var div = el("div", "kpi");
      var b = el("b", null, fmtInt(sum(k[0])));
      b.setAttribute("data-k", k[0]);
      div.appendChild(b);
      div.appendChild(el("span", null, k[1]));
      fleet.appendChild(div);
    });
    var box = document.getElementById("store-cards");
    box.replaceChildren();
    stores.forEach(function (s) {
      var card = el("div", "store");
      card.setAttribute("data-store", s.store_id);
      var h = el("h3", null, s.store_id);
      var stale = now - s.last_seen_ms > 5 * 60000;
      var health = s.gateways === 0 ? ["bad", "no gateway"]
        : s.gateways_online < s.gateways ? ["bad", fmtInt(s.gateways_online) + "/" + fmtInt(s.gateways) + " online"]
        : stale || s.shed_ranges > 0 ? ["warn", fmtInt(s.gateways_online) + "/" + fmtInt(s.gateways) + " online"]
        : ["ok", fmtInt(s.gateways_online) + "/" + fmtInt(s.gateways) + " online"];
      var hs = el("span", "health " + health[0], health[1]);
      hs.setAttribute("data-k", "health");
      h.appendChild(hs);
      card.appendChild(h);
      // Present now, one bar split by tier.
      var W = 240, total = Math.max(1, s.present);
      var bar = svg("svg", { viewBox: "0 0 " + W + " 22", role: "img", "aria-label": "present by tier" });
      var x = 0;
      Object.keys(s.present_by_tier).sort().forEach(function (t) {
        var w = W * s.present_by_tier[t] / total;
        var r = svg("rect", { x: x, y: 2, width: w, height: 18, fill: colourOf(t), "data-tier": t });
        r.appendChild(svg("title", {}, (t || "unknown") + ": " + s.present_by_tier[t]));
        bar.appendChild(r);
        x += w;
      });
      if (!s.present) bar.appendChild(svg("rect", { x: 0, y: 2, width: W, height: 18, fill: "#eef1f5" }));
      card.appendChild(bar);
      var legend = el("p", "legend");
      Object.keys(s.present_by_tier).sort().forEach(function (t) {
        var sp = el("span");
        var i = el("i");
        i.style.background = colourOf(t);
        sp.appendChild(i);
        sp.appendChild(document.createTextNode((t || "unknown") + " " + s.present_by_tier[t]));
        legend.appendChild(sp);
      });
      card.appendChild(legend);
      var t = el("table");
      var tb = el("tbody");
      [["present", "present now", fmtInt(s.present)],
       ["visits_today", "visits today", fmtInt(s.visits_today)],
       ["avg_dwell_s", "average dwell", Math.round(s.avg_dwell_s / 60) + " min"],
       ["alerts", "alerts raised / taken / converted", fmtInt(s.alerts_raised) + " / " + fmtInt(s.alerts_taken) + " / " + fmtInt(s.alerts_converted)],
       ["held_out", "held out (control)", fmtInt(s.held_out)],
       ["last_seen", "last heard", fmtAgo(s.last_seen_ms, now)],
       ["outbox", "waiting in outboxes", s.outbox_depth == null ? "not reported" : fmtInt(s.outbox_depth)],
       ["shed", "outbox shed ranges (events)", fmtInt(s.shed_ranges) + " (" + fmtInt(s.events_shed) + ")"],
       ["bad_payloads", "refused messages", fmtInt(s.bad_payloads)]
      ].forEach(function (r) { row(tb, [{ text: r[1] }, { k: r[0], text: r[2] }]); });
      t.appendChild(tb);
      card.appendChild(t);
      box.appendChild(card);
    });
    if (!stores.length) box.appendChild(el("p", "note", "No store has a gateway yet."));
  }

  // --- rules -----------------------------------------------------------------------------
  function upliftBar(u) {
    var W = 200, H = 22, lo = -0.5, hi = 0.5;
    var x = function (v) { return (Math.max(lo, Math.min(hi, v)) - lo) / (hi - lo) * W; };
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, "class": "uplift", role: "img", "aria-label": "uplift interval" });
    s.appendChild(svg("line", { "class": "axis", x1: x(0), x2: x(0), y1: 0, y2: H }));
    if (u) {
      var colour = u.ci_low > 0 ? "#1f8a4c" : u.ci_high < 0 ? "#b3261e" : "#7d8896";
      s.appendChild(svg("line", { x1: x(u.ci_low), x2: x(u.ci_high), y1: H / 2, y2: H / 2, stroke: colour, "stroke-width": 4 }));
      s.appendChild(svg("circle", { cx: x(u.uplift), cy: H / 2, r: 5, fill: colour }));
    }
    return s;
  }
  function drawRules(rows) {
    var tbody = document.querySelector("#rules-table tbody");
    tbody.replaceChildren();
    rows.forEach(function (r) {
      var lines = [];
      if (r.holdout) lines.push({ store: "all stores", h: r.holdout });
      (r.stores || []).forEach(function (s) { lines.push({ store: s.store_id, h: s }); });
      if (!lines.length) lines.push({ store: "all stores", h: null });
      lines.forEach(function (l, i) {
        var h = l.h, u = h && h.uplift;
        row(tbody, [
          { text: i === 0 ? r.rule : "" },
          { k: "store", text: l.store },
          { k: "alerted", text: h ? fmtInt(h.alerted.occasions) : fmtInt(r.raised) },
          { k: "alerted_rate", text: h ? fmtPct(h.alerted.purchase_rate) : "–" },
          { k: "held_out", text: h ? fmtInt(h.held_out.occasions) : "0" },
          { k: "held_out_rate", text: h ? fmtPct(h.held_out.purchase_rate) : "–" },
          { k: "uplift", text: u ? fmtPts(u.uplift) + " (" + fmtPts(u.ci_low).replace(" pts", "") + " to " + fmtPts(u.ci_high).replace(" pts", "") + ")" : "no control group yet" },
          { k: "revenue", text: h && h.alerted.revenue_per_occasion_minor != null
            ? fmtMoney(h.alerted.revenue_per_occasion_minor) + " vs " + (h.held_out.revenue_per_occasion_minor != null ? fmtMoney(h.held_out.revenue_per_occasion_minor) : "–")
            : "–" },
          { node: upliftBar(u) }
        ], { "data-rule": r.rule, "data-store": l.store });
      });
      if (lines[0].h) document.getElementById("rules-window").textContent = String(lines[0].h.window_days);
    });
    if (!rows.length) row(tbody, [{ text: "No alerts yet." }]);
  }

  // --- refresh ---------------------------------------------------------------------------
  function showError(e) { document.getElementById("err").textContent = String(e && e.message || e); }

  var views = [
    ["/api/pyramid", drawPyramid],
    ["/api/dashboard/pareto", drawPareto],
    ["/api/dashboard/funnel", drawFunnel],
    [null, drawOverdue],
    ["/api/dashboard/stores", drawStores],
    ["/api/rules/report", drawRules]
  ];
  var rounds = 0;
  function refresh() {
    var all = views.map(function (v) {
      return getJson(v[0] || overduePath()).then(v[1]);
    });
    Promise.all(all).then(function () {
      document.getElementById("err").textContent = "";
      rounds += 1;
      var u = document.getElementById("updated");
      u.textContent = "updated " + new Date().toLocaleTimeString();
      // For tests and screenshots: every view has drawn this many times.
      document.body.setAttribute("data-rounds", String(rounds));
    }).catch(showError);
  }
  document.getElementById("overdue-store").addEventListener("change", refresh);
  document.getElementById("overdue-tier").addEventListener("change", refresh);
  document.getElementById("overdue-csv").addEventListener("click", downloadCsv);
  refresh();
  setInterval(refresh, 15000);
})();
