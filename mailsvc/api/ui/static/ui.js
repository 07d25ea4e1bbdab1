// Search as you type for the record field of the link form: fills the <datalist> with
// "id: title" choices from /ui/search. Without JavaScript the field takes a plain id.
(function () {
  const input = document.querySelector("[data-search]");
  const kind = document.getElementById("target-type");
  const list = document.getElementById("record-choices");
  if (!input || !kind || !list) return;
  let pending = 0;
  async function refresh() {
    const ticket = ++pending;
    const url = `${input.dataset.search}?kind=${encodeURIComponent(kind.value)}&q=${encodeURIComponent(input.value)}`;
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok || ticket !== pending) return;
    const choices = await response.json();
    list.replaceChildren(...choices.map((c) => Object.assign(document.createElement("option"), { value: c.label })));
  }
  input.addEventListener("input", refresh);
  kind.addEventListener("change", refresh);
})();

// A form with data-confirm asks before it is sent (dropping a quarantined mail deletes it).
document.querySelectorAll("form[data-confirm]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});
