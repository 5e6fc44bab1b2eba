use clap::Parser;
use notification_service::{config::Settings, startup::Application};

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    common::runtime::run(settings.runtime, async move {
        let _telemetry = common::telemetry::init(&settings.log, "notification-service");
        let app = Application::build(settings).await?;
        app.run_until_stopped(common::shutdown::signal()).await
    })
}
