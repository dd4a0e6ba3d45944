// Package playersdk holds the keepwatch player SDK (keepwatch.js, the
// JavaScript module web players import) and the demo page that uses it, as
// files for `keepwatch dev` to serve. Go embeds only files at or below the
// embedding package, so the package lives beside the SDK.
package playersdk

import "embed"

// Files holds keepwatch.js, keepwatch.d.ts and demo/ (index.html, demo.js
// and clip.webm, a 40 s VP9 test pattern).
//
//go:embed keepwatch.js keepwatch.d.ts demo
var Files embed.FS
