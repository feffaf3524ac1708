// The Bluesky reference PDS (@atproto/pds) and an in-memory PLC directory (@did-plc/server) on
// 127.0.0.1, for postroom's Bluesky tests and demo. Started and stopped by sandbox/local/pds.py.
//
//   node run.mjs --modules DIR --data DIR --ready FILE [--port N] [--rate-limits]
//
// --modules is the node_modules folder installed from this folder's package-lock.json (kept
// outside the repo; see `make pds`). The PDS data (SQLite, blobs) lives under --data. When both
// servers listen, FILE gets {"url", "plc", "pid", "adminPassword"} as JSON (written whole, then
// renamed, so a reader never sees half of it). The admin password (random per start) lets a
// test take an account down. SIGTERM/SIGINT stop both servers and exit 0.
import { randomBytes } from 'node:crypto'
import { mkdirSync, renameSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import net from 'node:net'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

const HOST = '127.0.0.1'
const { values: args } = parseArgs({
  options: {
    modules: { type: 'string' },
    data: { type: 'string' },
    ready: { type: 'string' },
    port: { type: 'string', default: '0' },
    'rate-limits': { type: 'boolean', default: false },
  },
})
for (const name of ['modules', 'data', 'ready']) {
  if (!args[name]) {
    console.error(`run.mjs: --${name} is required`)
    process.exit(2)
  }
}

// Bare imports from a file in the repo would look in the repo; resolve them in the cache.
const requirePds = createRequire(join(args.modules, '@atproto/pds', 'package.json'))
const requirePlc = createRequire(join(args.modules, '@did-plc/server', 'package.json'))
const pdsLib = requirePds('@atproto/pds')
const { Secp256k1Keypair } = requirePds('@atproto/crypto')
const plcLib = requirePlc('@did-plc/server')

// Both libraries call app.listen(port), which binds every interface: keep them on loopback.
function loopbackOnly(app) {
  const listen = app.listen.bind(app)
  app.listen = (port) => listen(port, HOST)
}

// The PDS puts its port into its public URL (http://localhost:PORT), so it must be known first.
async function freePort() {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, HOST, resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

const plc = plcLib.PlcServer.create({ db: plcLib.Database.mock(), port: 0 })
loopbackOnly(plc.app)
const plcServer = await plc.start()
const plcUrl = `http://${HOST}:${plcServer.address().port}`

const port = Number(args.port) || (await freePort())
const dataDir = args.data
mkdirSync(join(dataDir, 'blobs'), { recursive: true })
const rotationKey = await Secp256k1Keypair.create({ exportable: true })
const env = {
  port,
  hostname: 'localhost',
  devMode: true, // http:// public URL, no SSRF protection against 127.0.0.1
  dataDirectory: dataDir,
  blobstoreDiskLocation: join(dataDir, 'blobs'),
  didPlcUrl: plcUrl,
  serviceHandleDomains: ['.test'],
  inviteRequired: false,
  rateLimitsEnabled: args['rate-limits'],
  jwtSecret: randomBytes(32).toString('hex'),
  adminPassword: randomBytes(16).toString('hex'),
  plcRotationKeyK256PrivateKeyHex: Buffer.from(await rotationKey.export()).toString('hex'),
  crawlers: [],
}
const pds = await pdsLib.PDS.create(pdsLib.envToCfg(env), pdsLib.envToSecrets(env))
loopbackOnly(pds.app)
await pds.start()

const url = `http://${HOST}:${port}`
const tmp = `${args.ready}.tmp`
writeFileSync(
  tmp,
  JSON.stringify({ url, plc: plcUrl, pid: process.pid, adminPassword: env.adminPassword }),
)
renameSync(tmp, args.ready)

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  await pds.destroy()
  await plc.destroy()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
