#!/usr/bin/env node
// js-libp2p interop dialer for dcloud's Python (py-libp2p) node.
//
// usage: node dial.mjs <multiaddr-with-/p2p/peerid> [--pings N]
//
// Creates a js-libp2p node with TCP transport only, Noise encryption only and
// yamux muxer only, plus the identify and ping services (standard protocol ids
// /ipfs/id/1.0.0 and /ipfs/ping/1.0.0). It dials the given multiaddr, runs
// identify against the remote, pings it N times (default 3) and prints exactly
// one JSON line on stdout:
//
//   {"ok":true,"remote_peer":"...","agent_version":"...","protocol_version":"...",
//    "protocols":[...],"listen_addrs":[...],"rtt_ms":[...]}      exit code 0
//   {"ok":false,"error":"..."}                                    exit code 1
//
// The whole run is bounded by a 20 s timeout. Diagnostics (if any) go to
// stderr only; set DEBUG=libp2p:* for js-libp2p debug logs (also on stderr).

// Node 20 lacks Promise.withResolvers (added in Node 22), which current
// js-libp2p packages use at runtime. Install a spec-conforming shim before
// any libp2p module is loaded (hence the dynamic imports below).
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}

const OVERALL_TIMEOUT_MS = 20_000
const DEFAULT_PINGS = 3

let finished = false
let stage = 'startup' // which step we are in, reported on failure
let failedStage // stage in which the main flow threw (before shutdown ran)

function emit (obj, code) {
  if (finished) return
  finished = true
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code))
  // in case the write callback never fires
  setTimeout(() => process.exit(code), 1000).unref()
}

function fail (err) {
  let msg
  if (err instanceof Error) {
    msg = `${err.name ?? 'Error'}: ${err.message}`
    if (err.code != null) msg += ` (code=${err.code})`
    if (err.cause != null) {
      const cause = err.cause instanceof Error ? `${err.cause.name}: ${err.cause.message}` : String(err.cause)
      msg += ` [cause: ${cause}]`
    }
    if (Array.isArray(err.errors) && err.errors.length > 0) {
      msg += ' [errors: ' + err.errors.map(e => (e instanceof Error ? `${e.name}: ${e.message}` : String(e))).join('; ') + ']'
    }
    if (process.env.DIAL_DEBUG) process.stderr.write(String(err.stack) + '\n')
  } else {
    msg = String(err)
  }
  emit({ ok: false, error: `${msg} (during ${failedStage ?? stage})` }, 1)
}

function parseArgs (argv) {
  let addr
  let pings = DEFAULT_PINGS
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--pings' || a.startsWith('--pings=')) {
      const v = a === '--pings' ? argv[++i] : a.slice('--pings='.length)
      if (v == null || !/^\d+$/.test(v)) throw new Error(`--pings expects a non-negative integer, got ${JSON.stringify(v)}`)
      pings = Number.parseInt(v, 10)
    } else if (a === '-h' || a === '--help') {
      throw new Error('usage: node dial.mjs <multiaddr-with-/p2p/peerid> [--pings N]')
    } else if (a.startsWith('--')) {
      throw new Error(`unknown option ${a}`)
    } else if (addr == null) {
      addr = a
    } else {
      throw new Error(`unexpected extra argument ${JSON.stringify(a)}`)
    }
  }
  if (addr == null) throw new Error('usage: node dial.mjs <multiaddr-with-/p2p/peerid> [--pings N]')
  return { addr, pings }
}

const overall = setTimeout(() => {
  fail(new Error(`overall timeout of ${OVERALL_TIMEOUT_MS / 1000}s exceeded`))
}, OVERALL_TIMEOUT_MS)

process.on('unhandledRejection', (err) => fail(err))
process.on('uncaughtException', (err) => fail(err))

async function main () {
  stage = 'argument parsing'
  const { addr, pings } = parseArgs(process.argv.slice(2))

  stage = 'loading js-libp2p'

  const [{ createLibp2p }, { tcp }, { noise }, { yamux }, { identify }, { ping }, { multiaddr }] = await Promise.all([
    import('libp2p'),
    import('@libp2p/tcp'),
    import('@chainsafe/libp2p-noise'),
    import('@chainsafe/libp2p-yamux'),
    import('@libp2p/identify'),
    import('@libp2p/ping'),
    import('@multiformats/multiaddr')
  ])

  stage = 'multiaddr parsing'
  const target = multiaddr(addr)
  const p2p = target.getComponents().filter(c => c.name === 'p2p')
  if (p2p.length === 0 || p2p[p2p.length - 1].value == null) {
    throw new Error(`multiaddr must end in /p2p/<peer id>: ${addr}`)
  }
  const expectedPeer = p2p[p2p.length - 1].value

  // One signal bounds every network operation; the timer above is the backstop.
  const signal = AbortSignal.timeout(OVERALL_TIMEOUT_MS - 1000)

  stage = 'node creation'
  const node = await createLibp2p({
    addresses: { listen: [] }, // dial-only
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      // standard ids: /ipfs/id/1.0.0 and /ipfs/ping/1.0.0 (default prefix "ipfs")
      identify: identify({ runOnConnectionOpen: false }),
      ping: ping()
    },
    // we ping explicitly; keep the background keep-alive pinger out of the way
    connectionMonitor: { enabled: false }
  })

  try {
    stage = 'dial (TCP + Noise + yamux upgrade)'
    const conn = await node.dial(target, { signal })
    const remotePeer = conn.remotePeer.toString()
    if (remotePeer !== expectedPeer) {
      throw new Error(`connected to ${remotePeer} but expected ${expectedPeer}`)
    }
    if (conn.encryption != null && conn.encryption !== '/noise') {
      throw new Error(`unexpected encryption protocol ${conn.encryption}`)
    }
    if (conn.multiplexer != null && conn.multiplexer !== '/yamux/1.0.0') {
      throw new Error(`unexpected stream multiplexer ${conn.multiplexer}`)
    }

    stage = 'identify'
    const id = await node.services.identify.identify(conn, { signal })

    const rtts = []
    for (let i = 0; i < pings; i++) {
      stage = `ping ${i + 1}/${pings}`
      rtts.push(await node.services.ping.ping(conn.remotePeer, { signal }))
    }

    return {
      ok: true,
      remote_peer: remotePeer,
      agent_version: id.agentVersion ?? null,
      protocol_version: id.protocolVersion ?? null,
      protocols: [...(id.protocols ?? [])],
      listen_addrs: (id.listenAddrs ?? []).map(ma => ma.toString()),
      rtt_ms: rtts
    }
  } catch (err) {
    failedStage = stage
    throw err
  } finally {
    stage = 'node shutdown'
    await Promise.race([
      node.stop().catch(() => {}),
      new Promise(resolve => setTimeout(resolve, 2000).unref())
    ])
  }
}

main().then(
  (result) => {
    clearTimeout(overall)
    emit(result, 0)
  },
  (err) => {
    clearTimeout(overall)
    fail(err)
  }
)
