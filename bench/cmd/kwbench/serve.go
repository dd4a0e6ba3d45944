package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/keepwatch/keepwatch/bench/bare"
	"github.com/keepwatch/keepwatch/bench/naive"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// runServe runs one baseline server until SIGTERM.
func runServe(ctx context.Context, args []string, _ io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	kind := fs.String("kind", "bare", "bare, naive-redis or naive-mongo")
	addr := fs.String("http-addr", "127.0.0.1:8090", "listen address")
	redisURL := fs.String("redis-url", "redis://127.0.0.1:6379/0", "Redis of naive-redis")
	mongoURI := fs.String("mongo-uri", "", "MongoDB of naive-mongo")
	mongoDB := fs.String("mongo-db", "kwbench", "database of naive-mongo")
	secret := fs.String("auth-secret", "", "comma-separated HS256 secrets (naive servers)")
	pool := fs.Int("redis-pool-size", 0, "naive-redis: Redis connections (0: go-redis' default, 10 per GOMAXPROCS)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var app *fiber.App
	switch *kind {
	case "bare":
		app = bare.New()
	case "naive-redis":
		opt, err := redis.ParseURL(*redisURL)
		if err != nil {
			return fmt.Errorf("parse --redis-url: %w", err)
		}
		if *pool > 0 {
			opt.PoolSize = *pool
		}
		c := redis.NewClient(opt)
		defer c.Close()
		app = naive.New(naive.NewRedisStore(c), strings.Split(*secret, ","))
	case "naive-mongo":
		cl, err := mongo.Connect(options.Client().ApplyURI(*mongoURI))
		if err != nil {
			return fmt.Errorf("connect to mongodb: %w", err)
		}
		defer func() { _ = cl.Disconnect(context.Background()) }()
		st, err := naive.NewMongoStore(ctx, cl.Database(*mongoDB))
		if err != nil {
			return err
		}
		app = naive.New(st, strings.Split(*secret, ","))
	default:
		return fmt.Errorf("unknown --kind %q", *kind)
	}
	errc := make(chan error, 1)
	go func() { errc <- app.Listen(*addr) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", *kind, err)
	case <-ctx.Done():
		return app.ShutdownWithTimeout(5 * time.Second)
	}
}
