//! The store as the gateway's [`PolicySource`]: the role bindings a subject holds, read in one
//! query that leaves out what must not grant — bindings in a disabled workspace, bindings of a
//! disabled or deleted user. Every change to those rows bumps the change generation in its
//! transaction, so the authoriser's caches drop within `auth.invalidation_poll`.

use sqlx::Row;

use super::Store;
use crate::access::{
    PolicyError, PolicyFuture, PolicySource, RoleBinding, SubjectRef, WorkspaceFacts,
};

impl Store {
    /// The active role bindings of a subject (`user` or `key`, by id), as (role, workspace id or
    /// `*`).
    pub async fn active_role_bindings(
        &self,
        subject_kind: &str,
        subject_id: &str,
    ) -> Result<Vec<(String, String)>, super::StoreError> {
        let (kind, id) = (subject_kind.to_owned(), subject_id.to_owned());
        self.at_home(move |store| async move {
            let rows = sqlx::query(
                "SELECT b.role, b.workspace_id FROM role_bindings b
                 LEFT JOIN workspaces w ON w.id = b.workspace_id
                 LEFT JOIN users u ON b.subject_kind = 'user' AND u.id = b.subject_id
                 WHERE b.subject_kind = $1 AND b.subject_id = $2
                   AND (b.workspace_id = '*' OR (w.id IS NOT NULL AND w.disabled_at IS NULL))
                   AND (b.subject_kind <> 'user' OR (u.id IS NOT NULL AND u.disabled_at IS NULL))",
            )
            .bind(&kind)
            .bind(&id)
            .fetch_all(store.pool())
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(Into::into)
        })
        .await
    }
}

impl PolicySource for Store {
    fn bindings<'a>(&'a self, subject: SubjectRef<'a>) -> PolicyFuture<'a, Vec<RoleBinding>> {
        Box::pin(async move {
            let rows = self
                .active_role_bindings(subject.kind(), subject.id())
                .await
                .map_err(PolicyError::new)?;
            Ok(rows
                .iter()
                .map(|(role, ws)| RoleBinding::new(role, ws))
                .collect())
        })
    }

    fn workspace<'a>(&'a self, id: &'a str) -> PolicyFuture<'a, Option<WorkspaceFacts>> {
        Box::pin(async move {
            Ok(Store::workspace(self, id)
                .await
                .map_err(PolicyError::new)?
                .map(|w| WorkspaceFacts {
                    active: !w.is_disabled(),
                    name: w.name.into(),
                }))
        })
    }
}
