// Starts @automerge/automerge-repo-sync-server (path in argv[2]) bound to 127.0.0.1: the
// package calls `app.listen(PORT)`, which listens on every interface, and has no host setting.
import http from "node:http"
import { resolve } from "node:path"
import { pathToFileURL } from "node:url"

const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === "number" && (rest.length === 0 || typeof rest[0] === "function")) {
    return listen.call(this, port, "127.0.0.1", ...rest)
  }
  return listen.call(this, port, ...rest)
}

await import(pathToFileURL(resolve(process.argv[2])).href)
