#include "router/session_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/secure_random.h"
#include "common/status.h"

namespace latentserve::router {

namespace {

absl::Status Unknown(const std::string& id) {
  // One message whether the session never existed, expired or belongs to another client:
  // a caller learns nothing about other clients' ids.
  return absl::NotFoundError(absl::StrCat("session '", id.substr(0, 64),
                                          "' is unknown to this router (closed, expired, or never created here); "
                                          "create a new one"));
}

}  // namespace

absl::StatusOr<Session> SessionStore::Begin(const std::string& owner, std::vector<int32_t> tokens, bool pinned,
                                            absl::Duration ttl, absl::Duration idle, absl::Time now) {
  if (tokens.empty()) return absl::InvalidArgumentError("a session's document has no tokens");
  if (ttl < absl::ZeroDuration() || idle < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ttl_ms and idle_timeout_ms must be >= 0 (0: the router's default)");
  }
  ttl = ttl == absl::ZeroDuration() ? limits_.default_ttl : std::min(ttl, limits_.default_ttl);
  idle = idle == absl::ZeroDuration() ? limits_.default_idle : std::min(idle, limits_.default_idle);
  ASSIGN_OR_RETURN(std::string random, SecureRandomHex(16));
  const int64_t length = static_cast<int64_t>(tokens.size());
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int64_t>(sessions_.size()) >= limits_.max_total) {
    return absl::ResourceExhaustedError(absl::StrCat("this router holds ", limits_.max_total,
                                                     " sessions (--max-sessions); retry after some close or expire"));
  }
  const int64_t mine = std::count_if(sessions_.begin(), sessions_.end(), [&](const auto& entry) {
    return entry.second.owner == owner;
  });
  if (mine >= limits_.max_per_client) {
    return absl::ResourceExhaustedError(absl::StrCat("this client already holds ", mine,
                                                     " sessions (--max-sessions-per-client); close one first"));
  }
  if (pinned && (length > limits_.max_pinned_tokens || pinned_tokens_ > limits_.max_pinned_tokens - length)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "pinning ", length, " more document tokens would pass this router's limit of ", limits_.max_pinned_tokens,
        " pinned tokens (--session-max-pinned-tokens; ", pinned_tokens_, " pinned now); create it unpinned or close "
        "pinned sessions"));
  }
  Session session;
  session.id = absl::StrCat("sess-", random);
  session.owner = owner;
  session.tokens = std::make_shared<const std::vector<int32_t>>(std::move(tokens));
  session.pinned = pinned;
  session.created = now;
  session.last_used = now;
  session.ttl_deadline = now + ttl;
  session.idle = idle;
  if (!sessions_.emplace(session.id, session).second) {
    return absl::InternalError("session id collision: the kernel's random source repeats");
  }
  if (pinned) pinned_tokens_ += length;
  return session;
}

absl::Status SessionStore::SetWorker(const std::string& id, const std::string& worker, bool reprefill,
                                     absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return Unknown(id);
  it->second.worker = worker;
  it->second.ready = true;
  it->second.repairing = false;
  it->second.last_used = std::max(it->second.last_used, now);
  if (reprefill) it->second.reprefills++;
  return absl::OkStatus();
}

void SessionStore::MarkLost(const std::string& id, const std::string& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it != sessions_.end() && it->second.worker == worker) it->second.worker.clear();
}

bool SessionStore::TryStartRepair(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.repairing) return false;
  it->second.repairing = true;
  return true;
}

void SessionStore::EndRepair(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it != sessions_.end()) it->second.repairing = false;
}

absl::StatusOr<Session> SessionStore::Use(const std::string& id, const std::string& owner, absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.owner != owner || !it->second.ready || it->second.expires() <= now) {
    return Unknown(id);
  }
  it->second.requests++;
  it->second.last_used = now;
  return it->second;
}

std::vector<Session> SessionStore::List(const std::string& owner, absl::Time now) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Session> out;
  for (const auto& [id, session] : sessions_) {
    if (session.owner == owner && session.ready && session.expires() > now) out.push_back(session);
  }
  return out;
}

absl::StatusOr<Session> SessionStore::Close(const std::string& id, const std::string& owner) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.owner != owner || !it->second.ready) return Unknown(id);
  Session closed = std::move(it->second);
  sessions_.erase(it);
  if (closed.pinned) pinned_tokens_ -= static_cast<int64_t>(closed.tokens->size());
  return closed;
}

void SessionStore::Remove(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  if (it->second.pinned) pinned_tokens_ -= static_cast<int64_t>(it->second.tokens->size());
  sessions_.erase(it);
}

std::vector<Session> SessionStore::Expire(absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Session> out;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    // A session being created is not expired under its creator (its prefill may be long).
    if (it->second.ready && it->second.expires() <= now) {
      if (it->second.pinned) pinned_tokens_ -= static_cast<int64_t>(it->second.tokens->size());
      out.push_back(std::move(it->second));
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

int64_t SessionStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(sessions_.size());
}

int64_t SessionStore::pinned_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pinned_tokens_;
}

}  // namespace latentserve::router
