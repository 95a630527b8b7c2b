// MQTT 5 scenarios run with MQTT.js, a client library independent of the Python suite's paho and
// raw clients. Driven by tests/integration/test_mqttjs.py:
//
//   node scenario.mjs <scenario> '<json args>'
//
// args: {"host": ..., "port": ..., "ids": {...client ids chosen for their shard...}, "topic": ...}
// Prints one JSON object on stdout (the observations; the Python test asserts on them) and exits 0,
// or prints {"scenarioError": ...} and exits 1. Every wait is bounded; the whole run is cut at 15 s.

import mqtt from 'mqtt';

const [scenarioName, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs || '{}');
const URL = `mqtt://${args.host}:${args.port}`;
const opened = [];

const watchdog = setTimeout(() => fail(new Error(`scenario ${scenarioName} did not finish within 15 s`)), 15000);

function fail(err) {
  process.stdout.write(JSON.stringify({ scenarioError: String(err && err.stack ? err.stack : err) }) + '\n');
  for (const c of opened) {
    try { c.end(true); } catch { /* ignore */ }
  }
  process.exit(1);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(pred, ms, what) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

// JSON-friendly copy of MQTT 5 properties (Buffers as {"hex": ...}).
function plain(v) {
  if (Buffer.isBuffer(v)) return { hex: v.toString('hex') };
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') {
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = plain(x);
    return o;
  }
  return v;
}

function msgRecord(topic, payload, packet) {
  return {
    topic,
    payload: payload.toString('latin1'),
    len: payload.length,
    qos: packet.qos,
    retain: !!packet.retain,
    props: plain(packet.properties || {}),
    t: Date.now(),
  };
}

// Connect an MQTT 5 client and wait for its CONNACK, successful or not. Never reconnects.
// Resolves {client, connack, error, closed, messages, events}; messages are collected from the start.
function open(clientId, opts = {}) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(opts.url || URL, {
      protocolVersion: 5,
      clientId,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      keepalive: 30,
      ...opts,
    });
    opened.push(client);
    const h = { client, connack: null, error: null, closed: false, messages: [], received: [], sent: [] };
    client.on('message', (topic, payload, packet) => h.messages.push(msgRecord(topic, payload, packet)));
    client.on('packetreceive', (p) => {
      const rec = { cmd: p.cmd, t: Date.now() };
      if (p.cmd === 'publish') {
        rec.topic = p.topic.toString();
        rec.props = plain(p.properties || {});
        rec.messageId = p.messageId;
        rec.qos = p.qos;
      }
      h.received.push(rec);
      if (p.cmd === 'connack' && !h.connack) {
        h.connack = {
          reasonCode: p.reasonCode ?? p.returnCode,
          sessionPresent: !!p.sessionPresent,
          properties: plain(p.properties || {}),
        };
      }
    });
    client.on('packetsend', (p) => {
      if (p.cmd === 'publish') {
        h.sent.push({ topic: p.topic.toString(), alias: p.properties && p.properties.topicAlias });
      }
    });
    client.on('error', (e) => { h.error = { message: e.message, code: e.code }; resolve(h); });
    client.on('close', () => { h.closed = true; resolve(h); });
    client.on('connect', () => resolve(h));
    setTimeout(() => reject(new Error(`no CONNACK for ${clientId} within 5 s`)), 5000);
  });
}

async function connected(clientId, opts) {
  const h = await open(clientId, opts);
  if (!h.connack || h.connack.reasonCode !== 0) {
    throw new Error(`connect ${clientId} failed: ${JSON.stringify({ connack: h.connack, error: h.error })}`);
  }
  return h;
}

function subscribe(h, filter, opts) {
  return new Promise((resolve, reject) => {
    h.client.subscribe(filter, opts, (err, granted) => {
      if (err) reject(err);
      else resolve(granted.map((g) => g.qos));
    });
  });
}

function publish(h, topic, payload, opts = {}) {
  return new Promise((resolve, reject) => {
    h.client.publish(topic, payload, { qos: 1, ...opts }, (err) => (err ? reject(err) : resolve()));
  });
}

async function close(h) {
  if (h.closed || !h.client.connected) return;
  await h.client.endAsync();
}

// Abnormal disconnect: close the socket without DISCONNECT.
async function kill(h) {
  h.client.stream.destroy();
  await waitFor(() => h.closed, 3000, 'socket close');
}

const persistent = { clean: false, properties: { sessionExpiryInterval: 60 } };

const scenarios = {
  // Session Expiry Interval + Clean Start.
  async session({ ids, topic }) {
    let sub = await connected(ids.sub, persistent);
    const firstSessionPresent = sub.connack.sessionPresent;
    await subscribe(sub, topic, { qos: 1 });
    await close(sub);
    const pub = await connected(ids.pub);
    for (let i = 0; i < 3; i++) await publish(pub, topic, `q${i}`);
    sub = await connected(ids.sub, persistent);
    await waitFor(() => sub.messages.length >= 3, 5000, 'three queued messages');
    await sleep(200);
    const resumed = { sessionPresent: sub.connack.sessionPresent, messages: sub.messages };
    await close(sub);
    // Clean Start discards the session: nothing queued meanwhile is delivered.
    await publish(pub, topic, 'after-clean');
    sub = await connected(ids.sub, { clean: true, properties: { sessionExpiryInterval: 60 } });
    await sleep(500);
    const cleaned = { sessionPresent: sub.connack.sessionPresent, messages: sub.messages };
    await close(sub);
    await close(pub);
    return { firstSessionPresent, resumed, cleaned };
  },

  // Message Expiry Interval on messages queued for an offline session.
  async message_expiry({ ids, topic }) {
    let sub = await connected(ids.sub, persistent);
    await subscribe(sub, topic, { qos: 1 });
    await close(sub);
    const pub = await connected(ids.pub);
    await publish(pub, topic, 'keep', { properties: { messageExpiryInterval: 60 } });
    await publish(pub, topic, 'stale', { properties: { messageExpiryInterval: 1 } });
    await publish(pub, topic, 'plain');
    const queuedAt = Date.now();
    await sleep(2500);
    sub = await connected(ids.sub, persistent);
    await waitFor(() => sub.messages.length >= 2, 5000, 'two messages');
    await sleep(500);
    const waitedMs = sub.messages[0].t - queuedAt;
    await close(sub);
    await close(pub);
    return { sessionPresent: sub.connack.sessionPresent, waitedMs, messages: sub.messages };
  },

  // Topic aliases from client to server: MQTT.js assigns and then uses aliases by itself.
  async alias_client_to_server({ ids, topic }) {
    const sub = await connected(ids.sub);
    await subscribe(sub, `${topic}/#`, { qos: 1 });
    const pub = await connected(ids.pub, { autoAssignTopicAlias: true });
    const order = ['a', 'a', 'b', 'a', 'b', 'b'];
    for (const [i, t] of order.entries()) await publish(pub, `${topic}/${t}`, `m${i}`);
    await waitFor(() => sub.messages.length >= order.length, 5000, 'aliased messages');
    await sleep(200);
    await close(sub);
    await close(pub);
    return {
      serverTopicAliasMaximum: pub.connack.properties.topicAliasMaximum,
      sent: pub.sent,
      messages: sub.messages,
      received: sub.received.filter((p) => p.cmd === 'publish'),
    };
  },

  // Topic aliases from server to client: the client allows 2; MQTT.js resolves them.
  async alias_server_to_client({ ids, topic }) {
    const sub = await connected(ids.sub, { properties: { topicAliasMaximum: 2 } });
    await subscribe(sub, `${topic}/#`, { qos: 1 });
    const pub = await connected(ids.pub);
    const order = ['a', 'a', 'b', 'c', 'a', 'b', 'c', 'c'];
    for (const [i, t] of order.entries()) await publish(pub, `${topic}/${t}`, `m${i}`);
    await waitFor(() => sub.messages.length >= order.length, 5000, 'messages');
    await sleep(200);
    await close(sub);
    await close(pub);
    return {
      order,
      messages: sub.messages,
      received: sub.received.filter((p) => p.cmd === 'publish'),
      error: sub.error,
    };
  },

  // Receive Maximum 2: PUBACKs are held back by the script; it counts unacknowledged PUBLISHes.
  // (Delaying MQTT.js's own ack callbacks would stall its packet processing and hide a third
  // PUBLISH, so the PUBACK is intercepted on its way out instead and sent later.)
  async receive_maximum({ ids, topic }) {
    const n = 8;
    const sub = await connected(ids.sub, { properties: { receiveMaximum: 2 } });
    await subscribe(sub, topic, { qos: 1 });
    const held = [];
    let acked = 0;
    let holding = true;
    let maxOutstanding = 0;
    let publishes = 0;
    const origSend = sub.client._sendPacket.bind(sub.client);
    sub.client._sendPacket = (packet, cb, ...rest) => {
      if (packet.cmd === 'puback' && holding) {
        held.push(packet);
        if (cb) cb();
        return;
      }
      if (packet.cmd === 'puback') acked += 1;
      return origSend(packet, cb, ...rest);
    };
    sub.client.on('packetreceive', (p) => {
      if (p.cmd !== 'publish') return;
      publishes += 1;
      maxOutstanding = Math.max(maxOutstanding, publishes - acked);
    });
    const pub = await connected(ids.pub);
    for (let i = 0; i < n; i++) await publish(pub, topic, `r${i}`);
    await sleep(1000);
    const whileHeld = publishes;
    holding = false;
    // Acknowledge one at a time, 50 ms apart, until everything arrived.
    const deadline = Date.now() + 6000;
    while ((sub.messages.length < n || held.length) && Date.now() < deadline) {
      if (held.length) {
        holding = false;
        const p = held.shift();
        sub.client._sendPacket(p);
        holding = true;
      }
      await sleep(50);
    }
    holding = false;
    while (held.length) sub.client._sendPacket(held.shift());
    await sleep(200);
    await close(sub);
    await close(pub);
    return {
      serverReceiveMaximum: sub.connack.properties.receiveMaximum,
      whileHeld,
      maxOutstanding,
      publishes,
      payloads: sub.messages.map((m) => m.payload),
      error: sub.error,
    };
  },

  // Maximum Packet Size 200 on the subscriber.
  async maximum_packet_size({ ids, topic }) {
    const sub = await connected(ids.sub, { properties: { maximumPacketSize: 200 } });
    await subscribe(sub, topic, { qos: 1 });
    const pub = await connected(ids.pub);
    await publish(pub, topic, Buffer.alloc(1000, 'B'));
    await publish(pub, topic, 'small');
    await waitFor(() => sub.messages.length >= 1 || sub.closed, 5000, 'the small message');
    await sleep(500);
    const out = {
      payloads: sub.messages.map((m) => (m.len > 20 ? `<${m.len} bytes>` : m.payload)),
      publishesReceived: sub.received.filter((p) => p.cmd === 'publish').length,
      error: sub.error,
      closed: sub.closed,
    };
    await close(sub);
    await close(pub);
    return out;
  },

  // Request/response metadata forwarded untouched, both ways.
  async request_response({ ids, topic }) {
    const responder = await connected(ids.sub);
    await subscribe(responder, `${topic}/req`, { qos: 1 });
    const requester = await connected(ids.pub);
    await subscribe(requester, `${topic}/resp`, { qos: 1 });
    const props = {
      responseTopic: `${topic}/resp`,
      correlationData: Buffer.from([0, 1, 2, 0xff]),
      contentType: 'application/json; charset=utf-8',
      payloadFormatIndicator: true,
      userProperties: { a: ['1', '3'], b: '2', 'k é': ['z', 'y', 'x'] },
    };
    await publish(requester, `${topic}/req`, '{"q":"ping"}', { properties: props });
    await waitFor(() => responder.messages.length >= 1, 5000, 'the request');
    const req = responder.messages[0];
    const rp = responder.client; // reply using what arrived
    await new Promise((resolve, reject) => rp.publish(
      `${topic}/resp`, 'pong',
      { qos: 1, properties: { correlationData: Buffer.from(req.props.correlationData.hex, 'hex'), userProperties: { r: ['2', '1'] } } },
      (e) => (e ? reject(e) : resolve()),
    ));
    await waitFor(() => requester.messages.length >= 1, 5000, 'the response');
    await close(responder);
    await close(requester);
    return { request: req, response: requester.messages[0] };
  },

  // No Local, Retain As Published, Retain Handling 0/1/2.
  async subscription_options({ ids, topic }) {
    const retained = `${topic}/retained`;
    const live = `${topic}/live`;
    const pub = await connected(ids.pub);
    await publish(pub, retained, 'kept', { retain: true });
    // No Local: pub's own publication is not sent back to it; another client gets it.
    const other = await connected(ids.sub);
    await subscribe(other, live, { qos: 1 });
    await subscribe(pub, live, { qos: 1, nl: true });
    // Retain As Published on one subscription, not on another.
    const rap = await connected(ids.sub2);
    await subscribe(rap, live, { qos: 1, rap: true });
    await publish(pub, live, 'live-retained', { retain: true });
    await waitFor(() => other.messages.length >= 1 && rap.messages.length >= 1, 5000, 'live messages');
    await sleep(300);
    const noLocal = { own: pub.messages.filter((m) => m.topic === live), other: other.messages };
    const retainAsPublished = { rapTrue: rap.messages, rapFalse: other.messages };
    // Retain Handling (retained message `kept` exists on `retained`).
    const rh = {};
    const snap = async (h, key, opts) => {
      const before = h.messages.length;
      await subscribe(h, retained, { qos: 1, ...opts });
      await sleep(400);
      rh[key] = h.messages.slice(before).map((m) => ({ payload: m.payload, retain: m.retain }));
    };
    await snap(other, 'rh0_first', { rh: 0 });
    await snap(other, 'rh0_again', { rh: 0 });
    await snap(rap, 'rh1_first', { rh: 1 });
    await snap(rap, 'rh1_again', { rh: 1 });
    const third = await connected(ids.sub3);
    await snap(third, 'rh2_first', { rh: 2 });
    // Clean up the retained messages.
    await publish(pub, retained, '', { retain: true });
    await publish(pub, live, '', { retain: true });
    for (const h of [pub, other, rap, third]) await close(h);
    return { noLocal, retainAsPublished, retainHandling: rh };
  },

  // Two overlapping subscriptions with Subscription Identifiers 5 and 7.
  async subscription_identifiers({ ids, topic }) {
    const sub = await connected(ids.sub);
    const available = sub.connack.properties.subscriptionIdentifiersAvailable;
    await subscribe(sub, `${topic}/+`, { qos: 1, properties: { subscriptionIdentifier: 5 } });
    await subscribe(sub, `${topic}/#`, { qos: 1, properties: { subscriptionIdentifier: 7 } });
    await subscribe(sub, `${topic}/none/#`, { qos: 1 });
    const pub = await connected(ids.pub);
    await publish(pub, `${topic}/x`, 'both');
    await publish(pub, `${topic}/none/y`, 'seven-and-plain');
    await waitFor(() => sub.messages.length >= 2, 5000, 'messages');
    await sleep(400);
    await close(sub);
    await close(pub);
    return { available, messages: sub.messages };
  },

  // Shared subscription with members on different shards.
  async shared({ ids, topic }) {
    const members = [];
    for (const id of ids.members) {
      const h = await connected(id);
      await subscribe(h, `$share/g/${topic}`, { qos: 1 });
      members.push(h);
    }
    const pub = await connected(ids.pub);
    const n = 30;
    for (let i = 0; i < n; i++) await publish(pub, topic, `s${i}`);
    const total = () => members.reduce((s, h) => s + h.messages.length, 0);
    await waitFor(() => total() >= n, 5000, `${n} shared messages`);
    await sleep(400);
    for (const h of members) await close(h);
    await close(pub);
    return { n, perMember: members.map((h) => h.messages.map((m) => m.payload)) };
  },

  // Will Delay Interval: sent after the delay; cancelled by a reconnect within it.
  async will_delay({ ids, topic }) {
    const watcher = await connected(ids.sub);
    await subscribe(watcher, `${topic}/#`, { qos: 1 });
    const will = (t, delay) => ({
      will: { topic: t, payload: Buffer.from('gone'), qos: 1, retain: false, properties: { willDelayInterval: delay } },
      properties: { sessionExpiryInterval: 60 },
      clean: true,
    });
    const w1 = await connected(ids.will1, will(`${topic}/delayed`, 1));
    const t0 = Date.now();
    await kill(w1);
    await waitFor(() => watcher.messages.length >= 1, 4000, 'the delayed will');
    const delayed = { payload: watcher.messages[0].payload, afterMs: watcher.messages[0].t - t0 };
    const w2 = await connected(ids.will2, will(`${topic}/cancelled`, 2));
    await kill(w2);
    await sleep(300);
    const back = await connected(ids.will2, persistent);
    await sleep(2700);
    const cancelled = {
      sessionPresent: back.connack.sessionPresent,
      messages: watcher.messages.filter((m) => m.topic === `${topic}/cancelled`),
    };
    await close(back);
    await close(watcher);
    return { delayed, cancelled, all: watcher.messages.map((m) => m.topic) };
  },

  // CONNACK contents.
  async connack({ ids }) {
    const out = {};
    let h = await connected('', { clean: true });
    out.emptyId = h.connack;
    await close(h);
    h = await connected(ids.a, { keepalive: 0 });
    out.keepaliveZero = h.connack;
    await close(h);
    h = await connected(ids.b, { properties: { requestResponseInformation: true } });
    out.responseInfo = h.connack;
    await close(h);
    h = await connected(ids.c);
    out.plain = h.connack;
    await close(h);
    return out;
  },

  // Enhanced authentication with a method the server does not support.
  async enhanced_auth({ ids }) {
    const h = await open(ids.a, { properties: { authenticationMethod: 'SCRAM-SHA-1', authenticationData: Buffer.from('n,,n=user,r=abc') } });
    await waitFor(() => h.closed, 3000, 'the connection to close');
    return { connack: h.connack, closed: h.closed, error: h.error };
  },

  // Server redirection.
  async redirect({ ids }) {
    const h = await open(ids.a);
    await waitFor(() => h.closed, 3000, 'the connection to close');
    return { connack: h.connack, closed: h.closed, error: h.error };
  },

  // MQTT over WebSocket (ws://ADDR:PORT/mqtt) with MQTT 5 and 3.1.1, beside plain TCP: the
  // subscriber over WebSocket, the publisher over TCP, and the other way round.
  async websocket({ ids, topic, wsport, host }) {
    const ws = { url: `ws://${host}:${wsport}/mqtt` };
    const out = {};
    for (const version of [5, 4]) {
      const wsSub = await connected(`${ids.sub}-v${version}`, { ...ws, protocolVersion: version });
      await subscribe(wsSub, `${topic}/${version}/down`, { qos: 1 });
      const tcpSub = await connected(`${ids.pub}-s${version}`, { protocolVersion: version });
      await subscribe(tcpSub, `${topic}/${version}/up`, { qos: 1 });
      const wsPub = await connected(`${ids.pub}-v${version}`, { ...ws, protocolVersion: version });
      const big = 'x'.repeat(200000);
      for (let i = 0; i < 3; i++) await publish(tcpSub, `${topic}/${version}/down`, `d${i}`, { qos: 1 });
      await publish(tcpSub, `${topic}/${version}/down`, big, { qos: 1 });
      for (let i = 0; i < 3; i++) await publish(wsPub, `${topic}/${version}/up`, `u${i}`, { qos: 1 });
      await waitFor(() => wsSub.messages.length >= 4 && tcpSub.messages.length >= 3, 5000,
        'messages both ways');
      out[`v${version}`] = {
        down: wsSub.messages.map((m) => (m.len > 100 ? `len:${m.len}` : m.payload)),
        up: tcpSub.messages.map((m) => m.payload),
      };
      for (const h of [wsSub, tcpSub, wsPub]) await close(h);
    }
    return out;
  },

  // Maximum QoS from --max-qos 1.
  async max_qos({ ids, topic }) {
    const h = await connected(ids.a);
    const granted = await subscribe(h, topic, { qos: 2 });
    const pub = await connected(ids.pub);
    await publish(pub, topic, 'q1', { qos: 1 });
    await waitFor(() => h.messages.length >= 1, 5000, 'the message');
    await close(h);
    await close(pub);
    return { connack: h.connack, granted, messages: h.messages };
  },
};

const run = scenarios[scenarioName];
if (!run) fail(new Error(`unknown scenario ${scenarioName}; known: ${Object.keys(scenarios).join(', ')}`));
run(args).then((result) => {
  clearTimeout(watchdog);
  process.stdout.write(JSON.stringify(result) + '\n');
  for (const c of opened) {
    try { c.end(true); } catch { /* ignore */ }
  }
  process.exit(0);
}, fail);
