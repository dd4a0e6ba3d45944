package mongo

// SetAfterCheck makes s call f between the writer's first look at the
// tombstones and its writes, where a concurrent erase can slip in.
func SetAfterCheck(s *Store, f func()) { s.afterCheck = f }
