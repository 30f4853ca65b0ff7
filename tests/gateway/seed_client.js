// The seed's JavaScript client (websocket-service-spec.md, "Client Usage"), unchanged between
// the markers. The wrapper only supplies what a page would: a token, a fetch that resolves the
// relative URL against the gateway, and appendToChat.
const token = process.env.TOKEN;
const pageFetch = globalThis.fetch;
const fetch = (url, options) => pageFetch(new URL(url, process.env.BASE_URL), options);
const chat = [];
const appendToChat = (text) => chat.push(text);

(async () => {
// --- seed snippet begins ---
const response = await fetch('/api/v1/chat/stream', {
  method: 'POST',
  headers: {
    'Authorization': 'Bearer ' + token,
    'Content-Type': 'application/json'
  },
  body: JSON.stringify({ message: 'Hello' })
});

const reader = response.body.getReader();
const decoder = new TextDecoder();

while (true) {
  const { value, done } = await reader.read();
  if (done) break;

  const chunk = decoder.decode(value);
  const lines = chunk.split('\n\n');

  for (const line of lines) {
    if (line.startsWith('data: ')) {
      const data = JSON.parse(line.slice(6));

      if (data.type === 'token') {
        appendToChat(data.content);
      } else if (data.type === 'end') {
        console.log('Streaming complete', data.message_id);
        break;
      }
    }
  }
}
// --- seed snippet ends ---
console.log(JSON.stringify(chat));
})().catch((error) => { console.error(error); process.exit(1); });
