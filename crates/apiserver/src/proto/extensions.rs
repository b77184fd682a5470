//! Atoll's own fields on built-in kinds, beside the generated Kubernetes layout
//! (`schema.rs`, which is never edited by hand). Each entry adds fields to a generated
//! message or defines a message of ours; everything that reads the layout (protobuf
//! decoding, `fieldValidation=Strict`, the OpenAPI schemas) sees them as if Kubernetes had
//! them.
//!
//! Field numbers of fields added to Kubernetes messages start at 10000, far above any
//! Kubernetes uses, so a future Kubernetes field cannot collide with ours. Clients that
//! send protobuf do not know our fields, so they never arrive that way; the numbers exist
//! so that the layout stays one kind of table.

use super::{Card as C, Field as F, Ty as T};

/// Fields added to generated messages.
pub(super) static ADDED_FIELDS: &[(&str, &[F])] = &[
    (
        "k8s.io.api.core.v1.PodSpec",
        &[F { num: 10001, name: "virtualMachine", card: C::One, ty: T::Msg("io.atoll.api.core.v1.VirtualMachine") }],
    ),
    // A VM pod's snapshots (written by its node; see the Action kind).
    (
        "k8s.io.api.core.v1.PodStatus",
        &[F {
            num: 10001,
            name: "virtualMachine",
            card: C::One,
            ty: T::Msg("io.atoll.api.core.v1.VirtualMachineStatus"),
        }],
    ),
];

/// Messages of our own (see `api::vm` for what the fields mean).
pub(super) static MESSAGES: &[(&str, &[F])] = &[
    (
        "io.atoll.api.core.v1.VirtualMachineStatus",
        &[F { num: 1, name: "snapshots", card: C::Many, ty: T::Msg("io.atoll.api.core.v1.VirtualMachineSnapshot") }],
    ),
    (
        "io.atoll.api.core.v1.VirtualMachineSnapshot",
        &[
            F { num: 1, name: "name", card: C::One, ty: T::Str },
            F { num: 2, name: "creationTime", card: C::One, ty: T::Time },
        ],
    ),
    (
        "io.atoll.api.core.v1.VirtualMachine",
        &[
            F { num: 1, name: "name", card: C::One, ty: T::Str },
            F { num: 2, name: "image", card: C::One, ty: T::Str },
            F { num: 3, name: "imagePullPolicy", card: C::One, ty: T::Str },
            F { num: 4, name: "kernelCommandLine", card: C::One, ty: T::Str },
            F { num: 5, name: "userData", card: C::One, ty: T::Str },
            F { num: 6, name: "resources", card: C::One, ty: T::Msg("k8s.io.api.core.v1.ResourceRequirements") },
            F { num: 7, name: "sshAuthorizedKeys", card: C::Many, ty: T::Str },
            F { num: 8, name: "passwordSecretRef", card: C::One, ty: T::Msg("k8s.io.api.core.v1.SecretKeySelector") },
        ],
    ),
];
