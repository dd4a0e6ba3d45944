// Package api holds the OpenAPI 3.1 description of keepwatch's two HTTP APIs
// (command and query) and of the endpoints every service shares. Each service
// serves it at GET /openapi.json; a test checks it against the real routes.
package api

import _ "embed" // for go:embed

// OpenAPI is openapi.json: the OpenAPI 3.1 document, ready to serve as
// application/json. Callers must not modify it.
//
//go:embed openapi.json
var OpenAPI []byte
