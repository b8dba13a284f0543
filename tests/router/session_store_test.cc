// router/session_store: ownership, readiness, limits (per client, in all, pinned tokens),
// TTL and idle expiry with a driven clock (the store takes `now`), repair and worker loss.
#include "router/session_store.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace latentserve::router {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'800'000'000);

std::vector<int32_t> Document(int n) { return std::vector<int32_t>(static_cast<size_t>(n), 7); }

SessionLimits Limits() {
  SessionLimits limits;
  limits.default_ttl = absl::Minutes(60);
  limits.default_idle = absl::Minutes(10);
  limits.max_per_client = 2;
  limits.max_total = 3;
  limits.max_pinned_tokens = 100;
  return limits;
}

// Begin + SetWorker: a ready session held by "w1".
std::string Ready(SessionStore& store, const std::string& owner, int tokens, bool pinned,
                  absl::Duration ttl = absl::ZeroDuration(), absl::Duration idle = absl::ZeroDuration()) {
  auto session = store.Begin(owner, Document(tokens), pinned, ttl, idle, kStart);
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return "";
  EXPECT_TRUE(store.SetWorker(session->id, "w1", false, kStart).ok());
  return session->id;
}

TEST(SessionStore, IdsAreRandomAndOnlyTheOwnerSeesAReadySession) {
  SessionStore store(Limits());
  auto begun = store.Begin("alice", Document(5), false, absl::ZeroDuration(), absl::ZeroDuration(), kStart);
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_EQ(begun->id.rfind("sess-", 0), 0u);
  EXPECT_EQ(begun->id.size(), 5u + 32u);  // 128 bits in hex
  // Not ready while its document is prefilled: neither usable, listed nor closable.
  EXPECT_EQ(store.Use(begun->id, "alice", kStart).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store.List("alice", kStart).empty());
  EXPECT_EQ(store.Close(begun->id, "alice").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store.SetWorker(begun->id, "w1", false, kStart).ok());

  auto used = store.Use(begun->id, "alice", kStart + absl::Seconds(1));
  ASSERT_TRUE(used.ok()) << used.status();
  EXPECT_EQ(used->worker, "w1");
  EXPECT_EQ(used->requests, 1);
  EXPECT_EQ(*used->tokens, Document(5));
  // Another client gets the same NOT_FOUND as for an id that never existed.
  const absl::Status other = store.Use(begun->id, "mallory", kStart).status();
  const absl::Status unknown = store.Use("sess-00000000000000000000000000000000", "alice", kStart).status();
  EXPECT_EQ(other.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(other.message()).find("unknown to this router"), std::string::npos);
  EXPECT_TRUE(store.List("mallory", kStart).empty());
  EXPECT_EQ(store.Close(begun->id, "mallory").status().code(), absl::StatusCode::kNotFound);
  ASSERT_EQ(store.List("alice", kStart).size(), 1u);

  auto second = store.Begin("alice", Document(5), false, absl::ZeroDuration(), absl::ZeroDuration(), kStart);
  ASSERT_TRUE(second.ok());
  EXPECT_NE(second->id, begun->id);
  ASSERT_TRUE(store.Close(begun->id, "alice").ok());
  EXPECT_EQ(store.Close(begun->id, "alice").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.size(), 1);
}

TEST(SessionStore, LimitsPerClientInAllAndPinnedTokens) {
  SessionStore store(Limits());
  const std::string a1 = Ready(store, "alice", 60, true);
  Ready(store, "alice", 5, false);
  auto third = store.Begin("alice", Document(5), false, absl::ZeroDuration(), absl::ZeroDuration(), kStart);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(std::string(third.status().message()).find("--max-sessions-per-client"), std::string::npos);

  // 60 pinned now: 41 more passes the 100-token limit, 40 fits.
  auto over = store.Begin("bob", Document(41), true, absl::ZeroDuration(), absl::ZeroDuration(), kStart);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(std::string(over.status().message()).find("--session-max-pinned-tokens"), std::string::npos);
  EXPECT_EQ(store.pinned_tokens(), 60);
  Ready(store, "bob", 40, true);
  EXPECT_EQ(store.pinned_tokens(), 100);

  auto fourth = store.Begin("carol", Document(1), false, absl::ZeroDuration(), absl::ZeroDuration(), kStart);
  EXPECT_EQ(fourth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(std::string(fourth.status().message()).find("--max-sessions"), std::string::npos);

  // Closing gives the pinned tokens and the slots back.
  ASSERT_TRUE(store.Close(a1, "alice").ok());
  EXPECT_EQ(store.pinned_tokens(), 40);
  EXPECT_TRUE(store.Begin("carol", Document(60), true, absl::ZeroDuration(), absl::ZeroDuration(), kStart).ok());
  EXPECT_EQ(store.pinned_tokens(), 100);
}

TEST(SessionStore, RefusesEmptyDocumentsAndNegativeTimes) {
  SessionStore store(Limits());
  EXPECT_EQ(store.Begin("a", {}, false, absl::ZeroDuration(), absl::ZeroDuration(), kStart).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Begin("a", Document(1), false, absl::Seconds(-1), absl::ZeroDuration(), kStart).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Begin("a", Document(1), false, absl::ZeroDuration(), absl::Seconds(-1), kStart).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.size(), 0);
}

TEST(SessionStore, IdleTimeoutRefreshedByUseAndTtlCapped) {
  SessionStore store(Limits());
  // Asked 5 min idle and 2 h TTL: the TTL is capped at the router's 60 min.
  const std::string id = Ready(store, "alice", 5, true, absl::Hours(2), absl::Minutes(5));
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(store.List("alice", kStart)[0].expires(), kStart + absl::Minutes(5));
  // Used every 4 minutes it outlives its idle timeout, up to the TTL.
  absl::Time now = kStart;
  for (int i = 0; i < 14; ++i) {
    now += absl::Minutes(4);
    ASSERT_TRUE(store.Use(id, "alice", now).ok()) << i;
    EXPECT_TRUE(store.Expire(now).empty());
  }
  EXPECT_EQ(store.List("alice", now)[0].expires(), kStart + absl::Minutes(60));  // 56 + 5 > 60
  now = kStart + absl::Minutes(60);
  EXPECT_EQ(store.Use(id, "alice", now).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store.List("alice", now).empty());
  std::vector<Session> expired = store.Expire(now);
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].id, id);
  EXPECT_EQ(expired[0].worker, "w1");  // the caller drops it there
  EXPECT_EQ(store.size(), 0);
  EXPECT_EQ(store.pinned_tokens(), 0);
}

TEST(SessionStore, IdleExpiryWithoutUseAndDefaults) {
  SessionStore store(Limits());
  const std::string id = Ready(store, "alice", 5, false);  // defaults: 10 min idle, 60 min TTL
  EXPECT_TRUE(store.Expire(kStart + absl::Minutes(10) - absl::Milliseconds(1)).empty());
  EXPECT_EQ(store.Expire(kStart + absl::Minutes(10)).size(), 1u);
  EXPECT_EQ(store.Use(id, "alice", kStart).status().code(), absl::StatusCode::kNotFound);
}

TEST(SessionStore, SessionsBeingCreatedDoNotExpireAndRemoveFreesThem) {
  SessionStore store(Limits());
  auto begun = store.Begin("alice", Document(30), true, absl::ZeroDuration(), absl::Minutes(1), kStart);
  ASSERT_TRUE(begun.ok());
  EXPECT_TRUE(store.Expire(kStart + absl::Hours(5)).empty());  // its prefill may be long
  EXPECT_EQ(store.pinned_tokens(), 30);
  store.Remove(begun->id);  // a failed creation
  EXPECT_EQ(store.size(), 0);
  EXPECT_EQ(store.pinned_tokens(), 0);
  store.Remove(begun->id);  // twice is harmless
}

TEST(SessionStore, LostWorkerRepairedByOneRequest) {
  SessionStore store(Limits());
  const std::string id = Ready(store, "alice", 5, true);
  store.MarkLost(id, "w2");  // not its worker: nothing changes
  EXPECT_EQ(store.Use(id, "alice", kStart)->worker, "w1");
  store.MarkLost(id, "w1");
  EXPECT_EQ(store.Use(id, "alice", kStart)->worker, "");
  EXPECT_TRUE(store.TryStartRepair(id));
  EXPECT_FALSE(store.TryStartRepair(id));  // one at a time
  store.EndRepair(id);
  EXPECT_TRUE(store.TryStartRepair(id));
  ASSERT_TRUE(store.SetWorker(id, "w2", /*reprefill=*/true, kStart + absl::Seconds(1)).ok());
  EXPECT_TRUE(store.TryStartRepair(id));  // SetWorker ended the repair
  auto used = store.Use(id, "alice", kStart + absl::Seconds(2));
  ASSERT_TRUE(used.ok());
  EXPECT_EQ(used->worker, "w2");
  EXPECT_EQ(used->reprefills, 1);
  EXPECT_EQ(used->requests, 3);
  EXPECT_FALSE(store.TryStartRepair("sess-unknown"));
  EXPECT_EQ(store.SetWorker("sess-unknown", "w1", false, kStart).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace latentserve::router
