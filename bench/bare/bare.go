// Package bare is the ceiling keepwatch is compared with: a Fiber server with
// keepwatch's routes whose handlers answer at once and do nothing else — no
// auth, no body decoding, no storage.
package bare

import "github.com/gofiber/fiber/v2"

// New returns the bare server's app.
func New() *fiber.App {
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	accepted := func(c *fiber.Ctx) error { return c.SendStatus(fiber.StatusAccepted) }
	ok := func(c *fiber.Ctx) error { return c.SendStatus(fiber.StatusOK) }
	app.Post("/v1/progress", accepted)
	app.Post("/v1/progress/batch", accepted)
	app.Delete("/v1/progress/:video_id", accepted)
	app.Get("/v1/keep-watching", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		return c.SendString(`{"items":[]}`)
	})
	app.Get("/healthz", ok)
	app.Get("/readyz", ok)
	return app
}
