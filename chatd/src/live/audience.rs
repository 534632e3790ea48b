//! Who receives what: every room's members, every user's friends (accepted friend requests)
//! and who has blocked whom, started from a snapshot of the read models and kept from the log
//! by the hub. Pure state: no I/O, no clock.

use projector::queries::Relations;
use schema::{IdMap, IdSet, RoomId, UserId};

#[derive(Debug, Default)]
pub struct Audience {
    members: IdMap<RoomId, IdSet<UserId>>,
    rooms_of: IdMap<UserId, IdSet<RoomId>>,
    /// user → the users who see their presence as friends.
    followers: IdMap<UserId, IdSet<UserId>>,
    /// (blocker, blocked).
    blocks: IdSet<(UserId, UserId)>,
}

impl Audience {
    /// The audience as the read models hold it.
    pub fn new(relations: &Relations) -> Self {
        let mut audience = Self::default();
        for &(room, user) in &relations.members {
            audience.join(room, user);
        }
        for &(user, friend) in &relations.friends {
            audience.follow(user, friend);
        }
        audience.blocks.extend(relations.blocks.iter().copied());
        audience
    }

    pub fn block(&mut self, user: UserId, blocked: UserId, on: bool) {
        if on {
            self.blocks.insert((user, blocked));
        } else {
            self.blocks.remove(&(user, blocked));
        }
    }

    fn blocked_either(&self, a: UserId, b: UserId) -> bool {
        self.blocks.contains(&(a, b)) || self.blocks.contains(&(b, a))
    }

    pub fn join(&mut self, room: RoomId, user: UserId) {
        self.members.entry(room).or_default().insert(user);
        self.rooms_of.entry(user).or_default().insert(room);
    }

    pub fn leave(&mut self, room: RoomId, user: UserId) {
        remove_from(&mut self.members, room, &user);
        remove_from(&mut self.rooms_of, user, &room);
    }

    /// `user` sees `friend`'s presence.
    pub fn follow(&mut self, user: UserId, friend: UserId) {
        self.followers.entry(friend).or_default().insert(user);
    }

    pub fn unfollow(&mut self, user: UserId, friend: UserId) {
        remove_from(&mut self.followers, friend, &user);
    }

    pub fn is_member(&self, room: RoomId, user: UserId) -> bool {
        self.members.get(&room).is_some_and(|m| m.contains(&user))
    }

    /// How many members `room` has.
    pub fn member_count(&self, room: RoomId) -> usize {
        self.members.get(&room).map_or(0, IdSet::len)
    }

    /// The members of `room` (none for a room not known).
    pub fn members(&self, room: RoomId) -> impl Iterator<Item = UserId> + '_ {
        self.members.get(&room).into_iter().flatten().copied()
    }

    /// The users for whom `connected` holds who see `user`'s presence: their friends and the
    /// members of their rooms, `user` and anyone who has blocked `user` or been blocked by
    /// them excepted.
    pub fn watchers(&self, user: UserId, connected: impl Fn(UserId) -> bool) -> IdSet<UserId> {
        let mut watchers: IdSet<UserId> = self
            .followers
            .get(&user)
            .into_iter()
            .flatten()
            .copied()
            .filter(|u| connected(*u))
            .collect();
        for room in self.rooms_of.get(&user).into_iter().flatten() {
            watchers.extend(self.members(*room).filter(|m| connected(*m)));
        }
        watchers.remove(&user);
        watchers.retain(|w| !self.blocked_either(user, *w));
        watchers
    }

    /// The members of `room` (for a deleted room: all of them leave).
    pub fn close(&mut self, room: RoomId) {
        for user in self.members(room).collect::<Vec<_>>() {
            self.leave(room, user);
        }
    }
}

/// Removes `item` from the set at `key`, and the set when it becomes empty.
fn remove_from<K: std::hash::Hash + Eq, V: std::hash::Hash + Eq>(
    map: &mut IdMap<K, IdSet<V>>,
    key: K,
    item: &V,
) {
    if let Some(set) = map.get_mut(&key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_are_connected_followers_and_room_mates() {
        let [a, b, c, d] = [(); 4].map(|()| UserId::new());
        let room = RoomId::new();
        let mut audience = Audience::new(&Relations {
            position: 0,
            members: vec![(room, a), (room, b)],
            friends: vec![(c, a)],
            ended_sessions: Vec::new(),
            blocks: vec![],
        });
        let everyone = |_| true;
        assert_eq!(audience.watchers(a, everyone), IdSet::from_iter([b, c]));
        assert_eq!(audience.watchers(a, |u| u != c), IdSet::from_iter([b]));
        // Blocking hides presence both ways, friends and room mates alike.
        audience.block(b, a, true);
        assert_eq!(audience.watchers(a, everyone), IdSet::from_iter([c]));
        assert!(!audience.watchers(b, everyone).contains(&a));
        audience.block(b, a, false);
        // d follows b; c unfollows a; b leaves the room.
        audience.follow(d, b);
        audience.unfollow(c, a);
        audience.leave(room, b);
        assert!(audience.watchers(a, everyone).is_empty());
        assert_eq!(audience.watchers(b, everyone), IdSet::from_iter([d]));
        assert!(!audience.is_member(room, b));
        assert_eq!(audience.members(room).collect::<Vec<_>>(), vec![a]);
        audience.leave(room, a);
        assert!(audience.members.is_empty() && audience.rooms_of.is_empty());
    }
}
