package naive

import (
	"context"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// MongoStore writes each event straight to MongoDB: one upsert per request,
// what keepwatch's buffer and flusher replace.
type MongoStore struct {
	coll *mongo.Collection
}

// NewMongoStore returns a store on db's collection "naive_progress", with the
// index its listing needs.
func NewMongoStore(ctx context.Context, db *mongo.Database) (*MongoStore, error) {
	coll := db.Collection("naive_progress")
	_, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "user", Value: 1}}})
	if err != nil {
		return nil, fmt.Errorf("create naive_progress index: %w", err)
	}
	return &MongoStore{coll: coll}, nil
}

// Put implements Store with one conditional upsert: $max on a subdocument led
// by the event time keeps the newest.
func (s *MongoStore) Put(ctx context.Context, user string, it Item, deleted bool) error {
	state := bson.D{{Key: "t", Value: it.UpdatedAt}, {Key: "deleted", Value: deleted},
		{Key: "percent", Value: it.Percent}, {Key: "position", Value: it.Position}, {Key: "duration", Value: it.Duration}}
	_, err := s.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: user + "/" + it.VideoID}},
		bson.D{
			{Key: "$max", Value: bson.D{{Key: "s", Value: state}}},
			{Key: "$setOnInsert", Value: bson.D{{Key: "user", Value: user}, {Key: "video_id", Value: it.VideoID}}},
		}, options.UpdateOne().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("upsert progress in mongodb: %w", err)
	}
	return nil
}

// List implements Store with one find by user.
func (s *MongoStore) List(ctx context.Context, user string) ([]Item, error) {
	cur, err := s.coll.Find(ctx, bson.D{{Key: "user", Value: user}})
	if err != nil {
		return nil, fmt.Errorf("list progress in mongodb: %w", err)
	}
	var docs []struct {
		VideoID string `bson:"video_id"`
		S       struct {
			T        int64   `bson:"t"`
			Deleted  bool    `bson:"deleted"`
			Percent  float64 `bson:"percent"`
			Position float64 `bson:"position"`
			Duration float64 `bson:"duration"`
		} `bson:"s"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("read progress from mongodb: %w", err)
	}
	out := make([]Item, len(docs))
	for i, d := range docs {
		out[i] = Item{VideoID: d.VideoID, Percent: d.S.Percent, Position: d.S.Position, Duration: d.S.Duration,
			UpdatedAt: d.S.T, deleted: d.S.Deleted}
	}
	return out, nil
}
