// The console's only script: small conveniences; every page works without it.
"use strict";

function syncEncoding(fieldset) {
  const protocol = fieldset.querySelector("select.protocol");
  const encoding = fieldset.querySelector("select.encoding");
  if (protocol && encoding) encoding.disabled = protocol.value === "grpc";
}

function addHeaderRow(fieldset) {
  const body = fieldset.querySelector("tbody.header-rows");
  const blank = body.querySelector("tr.blank");
  const row = blank.cloneNode(true);
  for (const input of row.querySelectorAll("input")) input.value = "";
  body.appendChild(row);
  row.querySelector("input").focus();
}

async function refreshCharts(box) {
  try {
    const response = await fetch("/overview/charts", { credentials: "same-origin" });
    if (response.ok && response.headers.get("content-type").startsWith("text/html")) {
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("charts");
      if (fresh) box.replaceChildren(...fresh.childNodes);
    }
  } catch (e) {
    // the next tick tries again
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const fieldset of document.querySelectorAll("fieldset.section-form")) {
    syncEncoding(fieldset);
    fieldset.querySelector("select.protocol").addEventListener("change", () => syncEncoding(fieldset));
    fieldset.querySelector("button.add-header").addEventListener("click", () => addHeaderRow(fieldset));
  }
  // A masked value is replaced, not appended to: select it when the field is entered.
  for (const input of document.querySelectorAll('input[type="password"][name$="header_value"]')) {
    input.addEventListener("focus", () => input.select());
  }
  const charts = document.getElementById("charts");
  if (charts) {
    const every = Number(charts.dataset.interval || "5") * 1000;
    setInterval(() => refreshCharts(charts), every);
  }
});
