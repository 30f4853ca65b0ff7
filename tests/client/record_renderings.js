// Injected by tests/client/test_console.py: records each rendering of the streaming answer's text
// (window.__renderings) and the text it ends with (window.__finished), when `data-status` is set
// on the live answer and before the history replaces it. History elements get their data-status
// before they are attached, which makes no attribute mutation. Observes `document`, so it also
// works as an init script that runs before <body> exists.
() => {
  window.__renderings = [];
  window.__finished = [];
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      const node = m.target instanceof Element ? m.target : m.target.parentElement;
      const message = node?.closest('.message.assistant');
      if (!message) continue;
      const text = message.querySelector('.text').textContent;
      if (m.type === 'attributes') {
        window.__finished.push({status: message.dataset.status, text});
      } else if (message.classList.contains('streaming') && window.__renderings.at(-1) !== text) {
        window.__renderings.push(text);
      }
    }
  }).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['data-status'],
  });
}
