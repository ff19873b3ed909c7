//! Member order: the scanner's guess of the next member of an object, from the order in which
//! members came in the last object of the same plan.
//!
//! The records of one list nearly always hold the same members in the same order. A guessed
//! member is known by comparing the input with its name as JSON writes it, quotes included:
//! no string scan, no hash, no probe of the plan's table. A guess is taken only when the bytes
//! match, so a wrong guess costs a compare, never a wrong answer; and what is learnt is kept
//! under the plan's identity ([`ObjectPlan::id`]), which no other plan shares, so a name
//! remembered as none of the plan's fields is none of them.
//!
//! What is learnt is kept per thread, from one scan and one request to the next (the responses
//! of one route share their shape), for a bounded number of plans and names.

use std::cell::Cell;

use crate::policy::compiled::{Member, ObjectPlan, QuotedName};

/// Most object plans whose order one thread keeps.
const PLANS: usize = 64;
/// Most names outside its fields remembered per plan.
const NAMES: usize = 64;
/// Longest name outside the fields that is remembered, in bytes.
const NAME_BYTES: usize = 64;
/// No guess.
const NOTHING: u16 = u16::MAX;

thread_local! {
    /// What the scans on this thread have learnt, lent to one scan at a time: the responses
    /// of one route share their shape, from one request to the next.
    static LEARNT: Cell<Orders> = const { Cell::new(Orders::new()) };
}

/// The orders of the plans a thread's scans have met.
#[derive(Debug, Default)]
pub(super) struct Orders {
    orders: Vec<Order>,
    /// The order to replace when a new plan comes and `PLANS` are kept.
    victim: usize,
}

/// The order last seen in objects of one plan.
#[derive(Debug)]
struct Order {
    /// [`ObjectPlan::id`] of the plan.
    plan: u64,
    /// The plan's number of fields.
    fields: usize,
    /// For each place a member can follow, the place of the member that came next last time
    /// ([`NOTHING`]: not known). Places: the plan's fields by index; then the object's start;
    /// then a name that cannot be remembered; then the names of `names`.
    next: Vec<u16>,
    /// Names outside the plan's fields, as they came (unescaped, so quoted as written).
    names: Vec<QuotedName>,
}

/// Where a member stands in an order: see [`Order::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place(usize);

/// Where the order of one plan is kept among a thread's orders, with that plan.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot<'p> {
    plan: &'p ObjectPlan,
    at: usize,
}

/// A member known from a guess: the length of its name, quotes included, and what the plan
/// says of it.
pub(super) struct Known<'p> {
    pub len: usize,
    pub member: Member<'p>,
}

impl Order {
    fn start(&self) -> Place {
        Place(self.fields)
    }

    fn unknown(&self) -> Place {
        Place(self.fields + 1)
    }

    /// The place of `names[j]`.
    fn named(&self, j: usize) -> Place {
        Place(self.fields + 2 + j)
    }

    /// The remembered name at `place`, if `place` is one.
    fn name_at(&self, place: Place) -> Option<&QuotedName> {
        self.names.get(place.0.checked_sub(self.fields + 2)?)
    }
}

impl Orders {
    const fn new() -> Self {
        Self {
            orders: Vec::new(),
            victim: 0,
        }
    }

    /// This thread's orders, for one scan to use and give back (a scan within that scan finds
    /// none).
    pub(super) fn borrow() -> Self {
        LEARNT.try_with(Cell::take).unwrap_or_default()
    }

    /// Gives back what [`Orders::borrow`] lent, with what the scan learnt.
    pub(super) fn give_back(self) {
        // Only fails while the thread ends: then nothing is left to learn for.
        let _ = LEARNT.try_with(|learnt| learnt.set(self));
    }

    /// The order of `plan`'s objects, made on first use (in place of the oldest order when
    /// `PLANS` are kept); `None` when the plan has too many fields to index.
    pub(super) fn of<'p>(&mut self, plan: &'p ObjectPlan) -> Option<Slot<'p>> {
        let at = self.place_of(plan)?;
        Some(Slot { plan, at })
    }

    /// The index of `plan`'s order, as [`Orders::of`] finds or makes it.
    fn place_of(&mut self, plan: &ObjectPlan) -> Option<usize> {
        let id = plan.id();
        if let Some(at) = self.orders.iter().position(|o| o.plan == id) {
            return Some(at);
        }
        let fields = plan.fields().len();
        if fields + 2 + NAMES >= usize::from(NOTHING) {
            return None;
        }
        if self.orders.len() < PLANS {
            self.orders.push(Order {
                plan: id,
                fields,
                next: vec![NOTHING; fields + 2],
                names: Vec::new(),
            });
            return Some(self.orders.len() - 1);
        }
        // The oldest order gives its place, and its room, to this one. An object of the plan
        // it held may still be open: from now on it finds another plan's id there (see
        // `Orders::mine`).
        let at = self.victim % PLANS;
        self.victim = (at + 1) % PLANS;
        let order = self.orders.get_mut(at)?;
        order.plan = id;
        order.fields = fields;
        order.next.clear();
        order.next.resize(fields + 2, NOTHING);
        order.names.clear();
        Some(at)
    }

    /// The order at `slot` if it still holds its plan's: a slot can be given to another plan
    /// while members of an object are being read (objects nested in it, of plans not kept
    /// yet), and that plan's fields and names are not this one's.
    fn mine(&self, slot: Slot<'_>) -> Option<&Order> {
        self.orders
            .get(slot.at)
            .filter(|o| o.plan == slot.plan.id())
    }

    /// [`Orders::mine`], to change.
    fn mine_mut(&mut self, slot: Slot<'_>) -> Option<&mut Order> {
        self.orders
            .get_mut(slot.at)
            .filter(|o| o.plan == slot.plan.id())
    }

    /// The place of an object's start in the order at `slot`.
    pub(super) fn start(&self, slot: Slot<'_>) -> Option<Place> {
        self.mine(slot).map(Order::start)
    }

    /// The member guessed to follow `previous` in the order at `slot`, if `input` (on the
    /// name's opening quote) holds that member's name as is.
    #[inline(always)]
    pub(super) fn guess<'p>(
        &self,
        slot: Slot<'p>,
        previous: Place,
        input: &[u8],
    ) -> (Option<Place>, Option<Known<'p>>) {
        let plan = slot.plan;
        let Some(order) = self.mine(slot) else {
            return (None, None);
        };
        let next = match order.next.get(previous.0) {
            Some(&next) if next != NOTHING => usize::from(next),
            _ => return (None, None),
        };
        let known = if next < order.fields {
            plan.quoted_at(next, input)
                .map(|(len, member)| Known { len, member })
        } else {
            // The start and an unremembered name are never guessed: no name there.
            let name = order.name_at(Place(next));
            name.and_then(|n| n.at(input)).map(|len| Known {
                len,
                member: plan.other_member(),
            })
        };
        (Some(Place(next)), known)
    }

    /// Records that after `previous` came `member` (its raw name `raw`, `escaped` if it held
    /// escapes), where `guessed` was expected, in the order at `slot`; returns the member's
    /// place (`None`: the order there is no longer the slot's plan's).
    pub(super) fn learn(
        &mut self,
        slot: Slot<'_>,
        previous: Place,
        guessed: Option<Place>,
        member: Member<'_>,
        raw: &[u8],
        escaped: bool,
    ) -> Option<Place> {
        let order = self.mine_mut(slot)?;
        let came = match member {
            Member::Field(i, _) => Place(i),
            _ if escaped => order.unknown(),
            _ => match order.names.iter().position(|n| n.quotes(raw)) {
                Some(j) => order.named(j),
                None if order.names.len() < NAMES && raw.len() <= NAME_BYTES => {
                    match std::str::from_utf8(raw).map(QuotedName::new) {
                        Ok(quoted) if !quoted.is_empty() => {
                            order.names.push(quoted);
                            order.next.push(NOTHING);
                            order.named(order.names.len() - 1)
                        }
                        _ => order.unknown(),
                    }
                }
                None => order.unknown(),
            },
        };
        if guessed != Some(came)
            && let Some(slot) = order.next.get_mut(previous.0)
        {
            *slot = u16::try_from(came.0).unwrap_or(NOTHING);
        }
        Some(came)
    }
}
