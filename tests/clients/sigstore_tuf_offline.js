// Preloaded into npm (NODE_OPTIONS=--require) by tests/e2e/test_signatures_npm.py.
//
// `npm audit signatures` (npm/lib/utils/verify-signatures.js) first refreshes the sigstore TUF
// repository, then asks it for `<registry host>/keys.json`; only when TUF answers that it has no
// such target (TUF_FIND_TARGET_ERROR, what a private registry always gets) does npm fetch the
// registry's own /-/npm/v1/keys. The tests run on loopback only, so the refresh cannot reach the
// TUF repository: this stands in for the TUF client, answering exactly what the real one answers
// for a registry it does not know, with the real TUFError class. Everything else is npm's own code:
// the keys fetch, pacote's signature check, the report and the exit status.
'use strict'
const Module = require('module')

const load = Module._load
Module._load = function (request, parent, isMain) {
  const loaded = load.apply(this, arguments)
  if (request !== '@sigstore/tuf') {
    return loaded
  }
  const notFound = (target) => new loaded.TUFError({
    code: 'TUF_FIND_TARGET_ERROR',
    message: `Target ${target} not found`,
  })
  return {
    ...loaded,
    initTUF: async () => ({ getTarget: async (target) => { throw notFound(target) } }),
  }
}
