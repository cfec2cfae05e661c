//! End-to-end tests across every scaleout process at once; the tests are in `tests/`.
//!
//! [`Stack`] runs the whole path in one process, each part built the way its binary builds it:
//! the gateway in front of the mobile API (reading from the local streaming replica), the
//! relay, and both workers, on a database, Redis prefix and set of AMQP names of their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use platform_messaging::test_support::TestTopology;
use platform_messaging::topology::{SENTIMENT, SPAM};
use platform_messaging::{ConsumeMode, Consumer, Outcome};
use platform_redis::Redis;
use platform_testing::{TestDatabase, TestRedis};
use serde_json::{Value, json};
use workers::classifier::SpamModel;
use workers::sentiment::Sentiment;
use workers::{
    DEFAULT_SPAM_THRESHOLD, SENTIMENT_CONSUMER, SPAM_CONSUMER, SentimentHandler, SpamHandler,
};

/// Every process of the comment path, running.
pub struct Stack {
    pub db: TestDatabase,
    pub redis: TestRedis,
    pub topology: TestTopology,
    /// The mobile API's own address, for its `/metrics`.
    pub api_addr: SocketAddr,
    /// The gateway's public and admin addresses.
    pub gateway_addr: SocketAddr,
    pub gateway_admin_addr: SocketAddr,
    pub relay: relay::Relay,
    pub spam: Consumer<SpamHandler>,
    pub sentiment: Consumer<SentimentHandler>,
    pub client: reqwest::Client,
    stop_gateway: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Stack {
    /// Starts the mobile API and, in front of it, the gateway with tracing on; the relay and
    /// the workers are built but step only when asked.
    pub async fn start() -> Self {
        let db = TestDatabase::create(&domain::MIGRATOR).await;
        let redis = TestRedis::new();
        let topology = TestTopology::create().await;

        let mut settings = mobile::configuration::Settings::default();
        settings.http.bind = "127.0.0.1:0".into();
        settings.http.http_workers = 1;
        settings.db = db.settings.clone();
        // Reads go to the local streaming replica once it has replayed what they must see.
        settings.db.database_replica_urls = db.replica_urls();
        settings.redis = redis.settings.clone();
        settings.run_migrations = false;
        let api = mobile::startup::Application::build(settings).await.unwrap();
        let api_addr = SocketAddr::from(([127, 0, 0, 1], api.port()));
        tokio::spawn(api.run_until_stopped());

        let config = gateway::Config::parse(&format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [[upstreams]]\nname = \"mobile\"\npolicy = \"round_robin\"\n\
             backends = [{{ addr = \"{api_addr}\" }}]\n\
             [[routes]]\ndefault = true\nupstream = \"mobile\"\n"
        ))
        .unwrap();
        let gateway = gateway::Gateway::build(config)
            .await
            .unwrap()
            .with_tracing(true);
        let (gateway_addr, gateway_admin_addr) = (gateway.local_addr(), gateway.admin_addr());
        let (stop_gateway, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));

        let relay = relay::Relay::new(
            db.pool.clone(),
            relay::Settings {
                db: db.settings.clone(),
                amqp: topology.settings.clone(),
                run_migrations: false,
                ..relay::Settings::default()
            },
        );
        let store = || {
            domain::store::Store::connect(
                &db.settings,
                Redis::connect(&redis.settings).unwrap(),
                &platform_cache::CacheSettings::default(),
            )
            .unwrap()
        };
        let spam = Consumer::new(
            topology.settings.clone(),
            topology.topology.subscriber(SPAM).unwrap().clone(),
            SPAM_CONSUMER,
            ConsumeMode::Pull,
            1,
            SpamHandler::new(
                store(),
                Arc::new(SpamModel::embedded()),
                DEFAULT_SPAM_THRESHOLD,
            ),
        );
        let sentiment = Consumer::new(
            topology.settings.clone(),
            topology.topology.subscriber(SENTIMENT).unwrap().clone(),
            SENTIMENT_CONSUMER,
            ConsumeMode::Pull,
            1,
            SentimentHandler::new(store(), Arc::new(Sentiment::default())),
        );
        Self {
            db,
            redis,
            topology,
            api_addr,
            gateway_addr,
            gateway_admin_addr,
            relay,
            spam,
            sentiment,
            client: reqwest::Client::new(),
            stop_gateway: Some(stop_gateway),
        }
    }

    /// `POST`s `body` to the API path `path` through the gateway; the answer must be a success.
    pub async fn call(&self, path: &str, body: Value, token: Option<&str>) -> Value {
        let mut request = self
            .client
            .post(format!("http://{}/api/v1{path}", self.gateway_addr))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the gateway answers");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap_or(Value::Null)
    }

    /// A user registers, logs in, writes a post and comments on it, all through the gateway;
    /// then the relay publishes the comment and each worker handles its copy. Returns the post.
    pub async fn comment_on_a_new_post(&mut self, comment: &str) -> i64 {
        let credentials = json!({ "username": "ada", "password": "correct horse battery" });
        self.call("/auth/register", credentials.clone(), None).await;
        let token = self.call("/auth/login", credentials, None).await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let post = self
            .call(
                "/posts",
                json!({ "title": "Traced", "body": "A post." }),
                Some(&token),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        let accepted = self
            .call(
                &format!("/posts/{post}/comments"),
                json!({ "body": comment }),
                Some(&token),
            )
            .await;
        assert_eq!(accepted["status"], "pending");

        assert_eq!(self.relay.relay_batch().await.unwrap().claimed, 1);
        let wait = Duration::from_secs(10);
        assert_eq!(
            self.spam.try_handle_one(wait).await.unwrap(),
            Some(Outcome::Acked)
        );
        assert_eq!(
            self.sentiment.try_handle_one(wait).await.unwrap(),
            Some(Outcome::Acked)
        );
        post
    }

    /// Stops the gateway, which ends its spans.
    pub fn stop_gateway(&mut self) {
        if let Some(stop) = self.stop_gateway.take() {
            let _ = stop.send(());
        }
    }
}
